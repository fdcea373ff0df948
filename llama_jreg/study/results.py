"""The study's per-run results: one flat dict per run, read from its files, and the cells they group into.

* :func:`run_result` reads a run dir (``config.yaml``, ``metrics.jsonl``, ``provenance.json``) and, when given,
  the JSON of ``llama-jreg eval RUN_DIR --json F`` into one flat dict: every number is copied from those files
  (the last row of each in-training task evaluation becomes ``task_<name>_accuracy``).
* :func:`cells` groups results by (experiment, cell, lambda); :func:`complete` keeps the runs that reached their
  last step (the only ones compared, averaged and plotted).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from llama_jreg.rows import read_metrics
from llama_jreg.train.provenance import read_provenance


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when it is missing or unreadable (not written yet, or cut short)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _dedup(rows: list[dict]) -> list[dict]:
    """A resumed run may log a step twice: keep the last row of each step, in step order."""
    return sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])


def cell_label(mode: str, weighting: str, l0: int = 2, stream: str | None = None) -> str:
    """The JREG variant of a run: ``jump`` (l0 = 2), ``jump-last`` (l0 = -1), ``jump-l0=K``, ``final``, ``paper``
    or ``weighted-<weighting>``, with ``-pre-norm`` / ``-post-norm`` when the stream is not the preset's."""
    if mode == "weighted":
        label = f"weighted-{weighting}"
    elif mode == "jump":
        label = {2: "jump", -1: "jump-last"}.get(l0, f"jump-l0={l0}")
    else:
        label = mode
    usual = "post_norm" if mode == "paper" else "pre_norm"
    if stream is not None and stream != usual:
        label += "-" + stream.replace("_", "-")
    return label


def train_seconds(train_rows: list[dict]) -> float:
    """A run's training time from its (deduplicated) train rows: each row's mean step time times the steps
    since the previous row."""
    total, prev = 0.0, 0
    for r in train_rows:
        total += r.get("step_time_s", 0.0) * (r["step"] - prev)
        prev = r["step"]
    return total


def logged_train_seconds(run_dir: str | Path) -> float:
    """:func:`train_seconds` of a run directory's ``metrics.jsonl``."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    return train_seconds(_dedup([r for r in rows if r.get("kind") == "train"]))


def run_result(run_dir: str | Path, experiment: str, eval_json: dict | None = None) -> dict:
    """One run's figures (see the module docstring). ``complete`` is False while the run is short of
    ``trainer.max_steps``."""
    run = Path(run_dir)
    cfg = OmegaConf.load(run / "config.yaml")
    rows = read_metrics(run / "metrics.jsonl")
    jump = _dedup([r for r in rows if r.get("kind") == "jump"])
    evals = _dedup([r for r in rows if r.get("kind") == "eval"])
    train = _dedup([r for r in rows if r.get("kind") == "train"])
    last_jump = jump[-1] if jump else {}
    last_eval = evals[-1] if evals else {}
    steps = max((r["step"] for r in rows if "step" in r), default=0)
    train_time = train_seconds(train)
    val_psi = last_jump.get("val_psi")
    tasks = {}  # the last row of each in-training task evaluation
    for r in rows:
        if r.get("kind") == "task" and isinstance(r.get("task"), str) and r["step"] >= tasks.get(r["task"], {}).get(
                "step", -1):
            tasks[r["task"]] = r
    prov = read_provenance(run)
    res = {
        "experiment": experiment,
        "run": run.name,
        "run_dir": str(run),
        "jreg.weight": float(cfg.jreg.weight),
        "jreg.mode": str(cfg.jreg.mode),
        "jreg.weighting": str(cfg.jreg.weighting),
        "jreg.l0": int(cfg.jreg.get("l0", 2)),
        "jreg.last_k": int(cfg.jreg.get("last_k", 2)),
        "cell": cell_label(str(cfg.jreg.mode), str(cfg.jreg.weighting), int(cfg.jreg.get("l0", 2)),
                           str(cfg.jreg.get("stream", "pre_norm"))),
        "n_layers": len(val_psi) if val_psi else int(cfg.model.n_layers),
        "seed": int(cfg.seed),
        "steps": steps,
        "max_steps": int(cfg.trainer.max_steps),
        "complete": steps >= int(cfg.trainer.max_steps),
        "tokens": max((r["tokens"] for r in rows if "tokens" in r), default=0),
        "train_loss": train[-1]["loss"] if train else None,
        "val_loss": last_eval.get("val_loss"),
        "val_ppl": last_eval.get("val_ppl"),
        "zeta_L": last_jump.get("zeta_L"),
        "val_zeta_L": last_jump.get("val_zeta_L"),
        "psi": last_jump.get("psi"),
        "val_psi": val_psi,
        "psi_L": val_psi[-1] if val_psi else None,
        "psi_post_norm_L": last_jump.get("psi_post_norm_L"),
        "train_time_s": train_time,
        "history": [{k: r.get(k) for k in ("step", "tokens", "zeta_L", "val_zeta_L", "psi", "val_psi")}
                    for r in jump],
        "eval_history": [{k: r.get(k) for k in ("step", "tokens", "val_loss")} for r in evals],
        "tasks": sorted(tasks),
        # what made the run (train/provenance.py): the code's commit and dirty flag at each start
        "provenance": [{k: p.get(k) for k in ("time", "step", "commit", "dirty", "command")} for p in prov],
    }
    for name, r in tasks.items():
        res.update({f"task_{name}_accuracy": r.get("accuracy"), f"task_{name}_n": r.get("n"),
                    f"task_{name}_step": r["step"]})
    if eval_json is not None:
        res.update(eval_fields(eval_json))
    return res


def eval_fields(eval_json: dict) -> dict:
    """The figures of a run's ``llama-jreg eval RUN_DIR --json F`` output that :func:`run_result` adds."""
    lens = eval_json["lens"]
    out = {
        "eval_step": eval_json.get("step"),
        "eval_tokens": eval_json["tokens"],
        "eval_loss": eval_json["loss"],
        "eval_accuracy": eval_json["accuracy"],
        "lens_loss": [r["loss"] for r in lens],
        "lens_agreement": [r["top1_agreement_with_final"] for r in lens],
        # logit-lens loss of h_1 (layer 1 reads the embeddings) and the mean over the middle streams
        # h_2 .. h_{L-1}: lower = the middle layers already hold more of the final prediction
        "lens_h1_loss": lens[1]["loss"] if len(lens) > 2 else None,
        "lens_mid_loss": (statistics.fmean(r["loss"] for r in lens[2:-1]) if len(lens) > 3 else None),
        "early_exit_saving": eval_json["saturation"]["early_exit_blocks_saved"],
        "mean_saturation_layer": eval_json["saturation"]["mean_layer"],
    }
    if "induction" in eval_json:
        out["induction_accuracy"] = eval_json["induction"]["accuracy"]
        out["induction_lens_accuracy"] = eval_json["induction"]["lens_accuracy"]
    return out


def complete(results: list[dict]) -> list[dict]:
    """The runs that reached ``trainer.max_steps``: the only ones compared, averaged and plotted."""
    return [r for r in results if r["complete"]]


def cells(results: list[dict]) -> dict[tuple[str, str, float], list[dict]]:
    """Results grouped by (experiment, cell, jreg.weight), in a stable order (lambda ascending)."""
    out: dict[tuple[str, str, float], list[dict]] = {}
    for r in sorted(results, key=lambda r: (r["experiment"], r["cell"] != "jump", r["cell"], r["jreg.weight"],
                                            r["seed"])):
        out.setdefault((r["experiment"], r["cell"], r["jreg.weight"]), []).append(r)
    return out


def by_seed(results: list[dict], key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in results if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])}


def stat_list(results: list[dict], key: str) -> list[float] | None:
    """Element-wise mean over seeds of a list-valued metric (None when a run lacks it or lengths differ)."""
    vals = [r.get(key) for r in results]
    if not vals or any(not v for v in vals) or len({len(v) for v in vals}) != 1:
        return None
    return [statistics.fmean(col) for col in zip(*vals)]


def run_complete(run: Path, experiment: str) -> bool:
    """Whether the run dir holds a run that reached ``trainer.max_steps`` (False when it cannot be read)."""
    try:
        return run_result(run, experiment)["complete"]
    except (OSError, ValueError, KeyError):
        return False
