"""`llama-jreg train [-m] [OVERRIDES...]`: one run, a resume, or a sweep (one full run per value, in sequence).

Overrides are Hydra's (``model=small jreg.weight=0.1 data.files=[a.jsonl]``). We compose with Hydra's Compose
API instead of ``@hydra.main`` so that accelerate/torchrun and Hydra never fight over argv or output dirs:
every rank composes the same config and so agrees on one ``run.dir``.

Sweeps: ``-m jreg.weight=0,0.01,0.1`` expands every comma list (and ``range(...)``) with Hydra's own override
parser; all jobs are validated before the first starts; job i runs in ``<hydra.sweep.dir>/<i>_<key=value>``
with its own wandb run, all in one wandb group (the sweep dir's name unless ``logger.group`` is set). wandb's
own terminal output (~30 lines a run) is silenced in sweeps; ``WANDB_SILENT=false`` keeps it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from llama_jreg import UserError
from llama_jreg.config import check_run_dir, describe, load_config, to_yaml, warnings_for
from llama_jreg.config_doc import help_groups, help_keys
from llama_jreg.rows import JumpRow, read_rows
from llama_jreg.train.reference import matching_reference, summary_lines
from llama_jreg.train.setup import build_config
from llama_jreg.train.trainer import train

HELP_USAGE = """\
values:
  resume=auto|PATH   continue run.dir from its newest checkpoint, with its own config.yaml (or from PATH)
  init_from=PATH     continued pre-training from a checkpoint / run dir / HF Llama dir / .gguf (or smollm2)
  tasks=[induction,cloze@100,choice:FILE,lm-eval:NAME]   task evaluation during training
  data.files=[a.jsonl,b.txt]   your corpus (picks data=local unless another data= is named)
  data.mixture=[{name: web, weight: 0.7, files: [web/*.jsonl]}, {name: code, weight: 0.3, hf_path: NAME}]
  hydra.sweep.dir=DIR (with -m)

examples:
  llama-jreg train model=small data=local data.files=[corpus.jsonl] jreg.weight=0.1
  llama-jreg train experiment=induction jreg.weight=0 seed=1
  llama-jreg train run.dir=runs/r1 resume=auto
  llama-jreg train init_from=path/to/SmolLM2-135M run.dir=runs/cont resume=auto optim.lr=1e-4
  llama-jreg train -m jreg.weight=0,0.01,0.1 hydra.sweep.dir=sweeps/lambda trainer.max_steps=2000
  accelerate launch --multi_gpu --num_processes 8 -m llama_jreg train model=large parallel=fsdp
"""


def _help_epilog() -> str:
    """The groups and presets found in configs/ and every schema key (llama_jreg.config_doc), then usage."""
    return f"{help_groups()}\n\n{help_keys()}\n\n{HELP_USAGE}"


def _parser(full_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llama-jreg train",
        description="Pre-train a Llama model with JREG. Arguments are Hydra overrides.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_help_epilog() if full_help else None,  # composing configs/ for the help costs ~1 s
    )
    p.add_argument("-m", "--multirun", action="store_true", help="sweep: one run per value of each a,b,c list")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=small jreg.weight=0.1")
    return p


def _split_hydra(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separate ``hydra.*`` keys (sweep dir) from config overrides."""
    rest, hydra = [], {}
    for o in overrides:
        if o.startswith("hydra."):
            key, _, value = o.partition("=")
            if key not in ("hydra.sweep.dir", "hydra.sweep.subdir", "hydra.job.chdir", "hydra.run.dir"):
                raise UserError(f"unsupported Hydra setting {key}; use hydra.sweep.dir=DIR (sweeps) or run.dir=DIR")
            hydra[key] = value
        else:
            rest.append(o)
    return rest, hydra


def _unparsable(overrides: list[str], detail: str) -> str:
    """The error line for an override Hydra's grammar refuses: which one, and how to quote its value."""
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except HydraException:
            key, _, value = o.partition("=")
            if value.startswith(("[", "{")):
                return (f"could not parse the override {o!r} ({detail}); a list is KEY=[a,b] and a dict "
                        "KEY={k:v}, with their brackets closed (quote an element holding = , or spaces)")
            if value and not value.startswith(("'", '"')) and "'" not in value:
                return (f"could not parse the override {o!r} ({detail}); a value holding = , [ ] {{ }} ( ) spaces or "
                        f"quotes must be quoted: '{key}=\"{value}\"' (with the outer quotes for the shell)")
            return f"could not parse the override {o!r} ({detail}); see `llama-jreg train --help` for the syntax"
    return detail


def expand_sweep(overrides: list[str]) -> list[tuple[list[str], str]]:
    """Cartesian product of all sweep overrides -> [(overrides, job_name)], in Hydra's BasicSweeper order."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UserError(_unparsable(overrides, str(e).splitlines()[0])) from None
    fixed, axes = [], []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([(f"{key}={v}", f"{o.key_or_group}={v}") for v in o.sweep_string_iterator()])
        else:
            fixed.append(o.input_line)
    if not axes:
        return [(fixed, "0")]
    jobs = []
    for i, combo in enumerate(itertools.product(*axes)):
        name = "_".join(label for _, label in combo)
        name = re.sub(r"[^A-Za-z0-9_.=+-]", "-", name)
        jobs.append((fixed + [ov for ov, _ in combo], f"{i}_{name}"))
    return jobs


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch (or a plain single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def _start_zeta(metrics_path) -> float | None:
    """The validation zeta_L measured at step 0 (before the first update), or None."""
    try:
        for row in read_rows(metrics_path, JumpRow):
            if row.step == 0 and row.val_zeta_L is not None:
                return float(row.val_zeta_L)
    except (OSError, TypeError, ValueError, UserError):
        return None
    return None


def _print_summary(summary: dict, cfg=None) -> None:
    """The end-of-run summary; with ``cfg``, also the lambda = 0 reference of the same recipe and step when
    there is one (``llama_jreg.train.reference``: `make demo`)."""
    if not is_main_process():
        return
    lines = ["", "=== llama-jreg run summary ==="]
    for key, label in (("steps", "steps"), ("tokens", "tokens seen"), ("final_loss", "final train loss"),
                       ("final_lm_loss", "final LM loss"), ("val_loss", "validation loss"), ("zeta_L", "zeta_L"),
                       ("val_zeta_L", "val zeta_L")):
        v = summary.get(key)
        if v is not None:
            lines.append(f"{label:>18}: {v:.4f}" if isinstance(v, float) else f"{label:>18}: {v}")
    start = _start_zeta(summary.get("metrics_path")) if cfg is not None and getattr(cfg, "init_from", None) else None
    if start is not None:  # a continued run: the jump of the model it started from, for comparison
        lines.append(f"{'val zeta_L, step 0':>18}: {start:.4f} (the init_from model, before training)")
    for name, row in (summary.get("tasks") or {}).items():
        acc = "-" if row.get("accuracy") is None else f"{row['accuracy']:.4f}"
        lines.append(f"{'task':>18}: {name} accuracy {acc} (n={row.get('n')}, step {row.get('step')})")
    if cfg is not None:
        ref = matching_reference(cfg, summary)
        if ref is not None:
            lines += summary_lines(ref)
    run_dir = summary.get("run_dir")
    lines.append(f"{'run dir':>18}: {run_dir}")
    lines.append(f"{'checkpoints':>18}: {Path(run_dir) / 'checkpoints' if run_dir else '-'}")
    lines.append(f"{'last checkpoint':>18}: {summary.get('last_checkpoint')}")
    lines.append(f"{'metrics':>18}: {summary.get('metrics_path')}")
    for p in summary.get("plots") or []:
        lines.append(f"{'plot':>18}: {p}")
    for p in summary.get("profile") or []:
        lines.append(f"{'profile':>18}: {p}")
    print("\n".join(lines), flush=True)


def print_header(cfg) -> None:
    """The first lines of a run: which data, model, JREG and schedule it uses, and any warning."""
    if is_main_process():
        lines = describe(cfg) + [f"warning: {w}" for w in warnings_for(cfg)]
        run_dir = Path(cfg.run.dir)
        if cfg.resume == "auto" and not any((run_dir / "checkpoints").glob("step_*")):
            lines.append(f"no checkpoint in {run_dir}: starting a new run")
        print("\n".join(lines), flush=True)


def run_one(overrides: list[str]) -> dict:
    cfg = build_config(overrides)
    print_header(cfg)
    summary = train(cfg)
    _print_summary(summary, cfg)
    return summary


def run_sweep(overrides: list[str], hydra: dict[str, str]) -> list[dict]:
    sweep_dir = Path(hydra.get("hydra.sweep.dir") or f"multirun/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    jobs = expand_sweep(overrides)
    cfgs = []
    for job_overrides, name in jobs:  # validate every job before the first starts
        run_dir = sweep_dir / name
        cfg = build_config(job_overrides, run_dir=run_dir)
        try:
            check_run_dir(cfg.run)  # the job's run dir replaces run.dir: it must stay inside run.root too
        except UserError:
            raise UserError(f"hydra.sweep.dir={sweep_dir} puts run {name} outside run.root={cfg.run.root}; "
                            "choose a sweep dir inside run.root") from None
        cfg.logger.group = cfg.logger.group or sweep_dir.name
        cfg.logger.run_name = cfg.logger.run_name or name
        cfgs.append((job_overrides, name, cfg))
    if is_main_process():
        sweep_dir.mkdir(parents=True, exist_ok=True)
        index = {"sweep_dir": str(sweep_dir), "jobs": [{"name": n, "overrides": o, "run_dir": c.run.dir}
                                                       for o, n, c in cfgs]}
        (sweep_dir / "sweep.json").write_text(json.dumps(index, indent=2))
        print(f"[sweep] {len(cfgs)} runs in {sweep_dir}", flush=True)
    os.environ.setdefault("WANDB_SILENT", "true")  # the sweep's own lines, not wandb's banner per run
    summaries = []
    for i, (job_overrides, name, cfg) in enumerate(cfgs):
        if is_main_process():
            print(f"[sweep] run {i + 1}/{len(cfgs)}: {name}  ({' '.join(job_overrides)})", flush=True)
        print_header(cfg)
        summary = train(cfg)
        _print_summary(summary, cfg)
        summaries.append(summary)
        if summary.get("stop_reason") in ("SIGTERM", "SIGINT", "signal"):  # a preempted / cancelled sweep stops
            if is_main_process():
                print(f"[sweep] stopped by {summary['stop_reason']} in run {i + 1}/{len(cfgs)} ({name}); "
                      f"{len(cfgs) - i - 1} run(s) not started: rerun the same command with resume=auto to "
                      "continue", flush=True)
            return summaries
    if is_main_process():
        print(f"[sweep] done; report: llama-jreg sweep-report {sweep_dir}", flush=True)
    return summaries


def main(argv: list[str]) -> int:
    args = _parser(full_help=bool({"-h", "--help"} & set(argv))).parse_args(argv)
    overrides, hydra = _split_hydra(args.overrides)
    if args.print_config:
        for job_overrides, _ in expand_sweep(overrides) if args.multirun else [(overrides, "")]:
            print(to_yaml(load_config(job_overrides)))
        return 0
    if args.multirun:
        run_sweep(overrides, hydra)
    else:
        if len(expand_sweep(overrides)) > 1:
            raise UserError("an override lists several values (a sweep); add -m: llama-jreg train -m KEY=a,b,c")
        run_one(overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
