"""The reproduction study's analysis (``scripts/reproduce.py``): one result per run, seed statistics, findings
computed from the numbers, plots and the Markdown report.

* :func:`run_result` reads a run dir (``config.yaml``, ``metrics.jsonl``) and, when given, the JSON of
  ``llama-jreg eval RUN_DIR --json F`` into one flat dict: every number is copied from those files.
* :func:`cell_stats` groups results by (experiment, mode, lambda) and gives mean, sample s.d., min and max
  over seeds; :func:`compare` says whether two cells are told apart by the seeds (the rule is in its
  docstring and printed in the report).
* :func:`findings` turns the comparisons into sentences, each tagged ``supports``, ``contradicts`` or
  ``noise`` (seed noise too large to tell), and :func:`write_report` renders ``report.md`` with its figures.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from llama_jreg.analysis.plots import read_metrics, save_figure

# ----------------------------------------------------------------------------------------------- per run


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


def run_result(run_dir: str | Path, experiment: str, eval_json: dict | None = None) -> dict:
    """One run's figures (see the module docstring). ``complete`` is False while the run is short of
    ``trainer.max_steps``."""
    from omegaconf import OmegaConf

    run = Path(run_dir)
    cfg = OmegaConf.load(run / "config.yaml")
    rows = read_metrics(run / "metrics.jsonl")
    jump = _dedup([r for r in rows if r.get("kind") == "jump"])
    evals = _dedup([r for r in rows if r.get("kind") == "eval"])
    train = _dedup([r for r in rows if r.get("kind") == "train"])
    last_jump = jump[-1] if jump else {}
    last_eval = evals[-1] if evals else {}
    steps = max((r["step"] for r in rows if "step" in r), default=0)
    # training time: each train row's mean step time times the steps since the previous row
    train_time, prev = 0.0, 0
    for r in train:
        train_time += r.get("step_time_s", 0.0) * (r["step"] - prev)
        prev = r["step"]
    val_psi = last_jump.get("val_psi")
    res = {
        "experiment": experiment,
        "run": run.name,
        "run_dir": str(run),
        "jreg.weight": float(cfg.jreg.weight),
        "jreg.mode": str(cfg.jreg.mode),
        "jreg.weighting": str(cfg.jreg.weighting),
        "cell": cell_label(str(cfg.jreg.mode), str(cfg.jreg.weighting), int(cfg.jreg.get("l0", 2)),
                           str(cfg.jreg.get("stream", "pre_norm"))),
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
    }
    if eval_json is not None:
        lens = eval_json["lens"]
        res.update({
            "eval_step": eval_json.get("step"),
            "eval_tokens": eval_json["tokens"],
            "eval_loss": eval_json["loss"],
            "eval_accuracy": eval_json["accuracy"],
            "lens_loss": [r["loss"] for r in lens],
            "lens_agreement": [r["top1_agreement_with_final"] for r in lens],
            # mean logit-lens loss of the intermediate streams h_1 .. h_{L-1}: lower = the middle layers
            # already hold more of the final prediction
            "lens_mid_loss": (statistics.fmean(r["loss"] for r in lens[1:-1]) if len(lens) > 2 else None),
            "early_exit_saving": eval_json["saturation"]["early_exit_blocks_saved"],
            "mean_saturation_layer": eval_json["saturation"]["mean_layer"],
        })
        if "induction" in eval_json:
            res["induction_accuracy"] = eval_json["induction"]["accuracy"]
            res["induction_lens_accuracy"] = eval_json["induction"]["lens_accuracy"]
    return res


# ----------------------------------------------------------------------------------------------- seeds


@dataclass
class Stat:
    """One metric of one cell over its seeds."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)


def stat(results: list[dict], key: str) -> Stat | None:
    vals = [r[key] for r in results if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return Stat(vals) if vals else None


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


@dataclass
class Comparison:
    """Cell ``a`` against the baseline ``b`` on one metric."""

    a: Stat
    b: Stat
    diff: float             # mean(a) - mean(b)
    verdict: str            # "higher" | "lower" | "noise" | "one seed"

    @property
    def rel(self) -> float | None:
        return self.diff / abs(self.b.mean) if self.b.mean else None


def compare(a: Stat, b: Stat) -> Comparison:
    """``a`` is told apart from ``b`` ("higher"/"lower") when both have >= 2 seeds, their seed ranges
    [min, max] do not overlap, and |mean(a) - mean(b)| exceeds twice the standard error of the difference,
    2 * sqrt(sd_a^2/n_a + sd_b^2/n_b). Otherwise "noise" (or "one seed" when a cell has a single seed, whose
    spread is unknown)."""
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Comparison(a, b, diff, "one seed")
    se = math.sqrt(a.sd ** 2 / a.n + b.sd ** 2 / b.n)
    apart = a.lo > b.hi or a.hi < b.lo
    if apart and abs(diff) > 2 * se:
        return Comparison(a, b, diff, "higher" if diff > 0 else "lower")
    return Comparison(a, b, diff, "noise")


@dataclass
class Paired:
    """Cell ``a`` against ``b`` seed by seed (the same seed: the same initialisation and data order)."""

    diffs: list[float]      # a_s - b_s per common seed
    verdict: str            # "higher" | "lower" | "noise"

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.diffs)

    def says(self, digits: int) -> str:
        up = sum(d > 0 for d in self.diffs)
        return (f"paired by seed {self.mean:+.{digits}f} ± {self.sd:.{digits}f}, higher in {up} of "
                f"{len(self.diffs)} seeds: {_SAYS[self.verdict]}")


def paired(a: dict[int, float], b: dict[int, float]) -> Paired | None:
    """Per-seed differences ``a[s] - b[s]`` over the seeds both have (None below 2): "higher"/"lower" when
    every difference has that sign and |mean| exceeds twice its standard error 2 * sd / sqrt(n) (any nonzero
    mean when the differences do not spread), otherwise "noise"."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [a[s] - b[s] for s in seeds]
    m, sd = statistics.fmean(d), statistics.stdev(d)
    same_sign = all(x > 0 for x in d) or all(x < 0 for x in d)
    if same_sign and abs(m) > 2 * sd / math.sqrt(len(d)):
        return Paired(d, "higher" if m > 0 else "lower")
    return Paired(d, "noise")


def by_seed(results: list[dict], key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in results if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])}


COMPARE_RULE = ("Two cells are compared twice. Unpaired: told apart only when both have at least 2 seeds, their "
                "seed ranges do not overlap and the difference of the means exceeds twice its standard error "
                "(2·sqrt(sd_a²/n_a + sd_b²/n_b)). Paired by seed (runs with the same seed share their "
                "initialisation and data order, so seed-to-seed spread cancels): told apart when the per-seed "
                "differences all have one sign and their mean exceeds twice its standard error (2·sd_d/sqrt(n)). "
                "A finding is filed by the paired verdict where both cells have at least 2 common seeds, else by "
                "the unpaired one; anything else is called seed noise. With 2 seeds either verdict is weak "
                "evidence: it says the seeds agree, not that the effect is settled.")


# ----------------------------------------------------------------------------------------------- findings


def _f(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _ms(s: Stat | None, digits: int = 3, n: bool = True) -> str:
    """``mean ± sd (n)`` (without the count when ``n`` is False)."""
    if s is None:
        return "-"
    if s.sd is None:
        return f"{_f(s.mean, digits)}" + (" (1 seed)" if n else "")
    return f"{_f(s.mean, digits)} ± {_f(s.sd, digits)}" + (f" (n={s.n})" if n else "")


def _claim(verdict_if: dict[str, str], verdict: str) -> str:
    """Map a comparison verdict onto supports / contradicts / noise via ``verdict_if`` (e.g. lower->supports)."""
    if verdict in ("noise", "one seed"):
        return "noise"
    return verdict_if[verdict]


CLAIMS = {
    "C1": "pre-trained LMs rotate the hidden state little in the middle layers and jump at the last one (E1)",
    "C2": "without suppression the final-layer jump grows during pre-training (E2: the λ = 0 runs)",
    "C3": "JREG lowers the jump (E3, E4: λ > 0 against λ = 0)",
    "C4": "JREG does not cost validation loss (a higher loss contradicts it, a lower one supports it)",
    "C5": "with JREG the middle layers do more of the work: a lower logit-lens loss of the intermediate layers "
          "and a larger oracle early-exit saving",
    "C6": "JREG helps a task: induction accuracy",
}
STAGE = {"continued": "E4"}  # experiments from scratch are E3
_SAYS = {"higher": "higher", "lower": "lower", "noise": "the seeds cannot tell them apart",
         "one seed": "one seed, spread unknown"}


def findings(results: list[dict], e1: list[dict] | None = None) -> list[tuple[str, str]]:
    """(tag, sentence) pairs, tag in supports | contradicts | noise, each sentence naming its claim
    (:data:`CLAIMS`); every number is taken from ``results`` (per-run dicts of :func:`run_result`) and ``e1``
    (``llama-jreg jump --json`` results with a ``name``)."""
    out: list[tuple[str, str]] = []
    results = complete(results)
    for m in e1 or []:
        psi = m["psi"]
        L = len(psi)
        if L < 4:
            continue
        mid = psi[1:-1]  # layers 2..L-1: layer 1 reads the raw embeddings
        k = mid.index(max(mid)) + 2
        tag = "supports" if psi[-1] > max(mid) and m["zeta_L"] > 0 else "contradicts"
        out.append((tag, f"C1 · E1, {m['name']}: Ψ_L = {_f(psi[-1], 4)} is "
                         f"{psi[-1] / statistics.median(mid):.1f}x the median of layers 2..{L - 1} "
                         f"({_f(statistics.median(mid), 4)}) and {'above' if psi[-1] > max(mid) else 'not above'} "
                         f"the largest of them ({_f(max(mid), 4)}, layer {k}); ζ_L = {_f(m['zeta_L'], 2)} "
                         f"(post-norm {_f(m['zeta_L_post_norm'], 2)}); layer 1 (from the embeddings): "
                         f"{_f(psi[0], 4)}."))
    by_cell = cells(results)
    for exp in sorted({r["experiment"] for r in results}):
        base = by_cell.get((exp, "jump", 0.0))
        if not base:
            continue
        stage = STAGE.get(exp, "E3")
        if stage == "E3":  # emergence from scratch: first vs last logged validation zeta_L at lambda = 0
            first = Stat([r["history"][0]["val_zeta_L"] for r in base if r["history"]])
            last = stat(base, "val_zeta_L")
            if first.n and last is not None:
                c = compare(last, first)
                p = paired(by_seed(base, "val_zeta_L"),
                           {r["seed"]: r["history"][0]["val_zeta_L"] for r in base if r["history"]})
                verdict = p.verdict if p is not None else c.verdict
                out.append((_claim({"higher": "supports", "lower": "contradicts"}, verdict),
                            f"C2 · E2, {exp}, λ = 0: validation ζ_L {_ms(first)} at the first measurement "
                            f"({base[0]['history'][0]['tokens']:,} tokens), {_ms(last)} at the end "
                            f"({base[0]['tokens']:,} tokens): unpaired, {_SAYS[c.verdict]}"
                            + (f"; {p.says(3)}" if p is not None else "") + "."))
        checks = (("C3", "val_zeta_L", "validation ζ_L", 3, {"lower": "supports", "higher": "contradicts"}),
                  ("C4", "val_loss", "validation loss", 4, {"lower": "supports", "higher": "contradicts"}),
                  ("C5", "lens_mid_loss", "logit-lens loss of layers 1..L-1", 3,
                   {"lower": "supports", "higher": "contradicts"}),
                  ("C5", "early_exit_saving", "oracle early-exit saving (fraction of blocks)", 3,
                   {"higher": "supports", "lower": "contradicts"}),
                  ("C6", "induction_accuracy", "induction accuracy", 3, {"higher": "supports", "lower": "contradicts"}))
        for (e, cell, w), rs in by_cell.items():
            if e != exp or (cell == "jump" and w == 0.0):
                continue
            for claim, key, label, digits, verdicts in checks:
                a, b = stat(rs, key), stat(base, key)
                if a is None or b is None:
                    continue
                c = compare(a, b)
                p = paired(by_seed(rs, key), by_seed(base, key))
                verdict = p.verdict if p is not None else c.verdict
                rel = f", {100 * c.rel:+.2f} %" if key == "val_loss" and c.rel is not None else ""
                start = ""
                if stage == "E4" and key == "val_zeta_L":  # continued pre-training starts from a measured jump
                    s0 = Stat([r["history"][0]["val_zeta_L"] for r in rs if r["history"]])
                    start = f"; at step {rs[0]['history'][0]['step']} it was {_ms(s0, digits)}" if s0.n else ""
                out.append((_claim(verdicts, verdict),
                            f"{claim} · {stage}, {exp}, {cell} λ = {w:g}: {label} {_ms(a, digits)} vs "
                            f"{_ms(b, digits)} at λ = 0 ({c.diff:+.{digits}f}{rel}): unpaired, "
                            f"{_SAYS[c.verdict]}" + (f"; {p.says(digits)}" if p is not None else "") + f"{start}."))
    return out


# ----------------------------------------------------------------------------------------------- tables


def headline_table(results: list[dict]) -> str:
    """lambda x seed: val loss, val zeta_L, Psi_L, induction accuracy, then mean ± sd per cell."""
    keys = [("val_loss", 4), ("val_zeta_L", 3), ("psi_L", 4), ("lens_mid_loss", 3), ("early_exit_saving", 3),
            ("induction_accuracy", 3)]
    lines = ["| experiment | JREG | λ | seed | val loss | val ζ_L | Ψ_L (val) | lens loss, mid layers | "
             "early-exit saving | induction acc. |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for (exp, cell, w), rs in cells(results).items():
        for r in rs:
            lines.append(f"| {exp} | {cell} | {w:g} | {r['seed']}{'' if r['complete'] else ' (running)'} | "
                         + " | ".join(_f(r.get(k), d) for k, d in keys) + " |")
        done = complete(rs)
        if len(done) > 1:
            lines.append(f"| {exp} | {cell} | {w:g} | **mean ± sd** | "
                         + " | ".join(_ms_short(stat(done, k), d) for k, d in keys) + " |")
    return "\n".join(lines)


def summary_table(results: list[dict]) -> str:
    """One row per cell (complete runs only): mean ± sd over the seeds of the final validation loss (and its
    change against the experiment's λ = 0 cell), the validation ζ_L at the first measurement and at the end,
    Ψ_L and, for the induction runs, the induction accuracy. The README shows this table (``headline.md``)."""
    lines = ["| experiment | JREG | λ | seeds | val loss | vs λ = 0 | val ζ_L, first measurement | val ζ_L, end | "
             "Ψ_L (val) | induction acc. |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_cell = cells(complete(results))
    for (exp, cell, w), rs in by_cell.items():
        base = stat(by_cell.get((exp, "jump", 0.0), []), "val_loss")
        loss = stat(rs, "val_loss")
        rel = (f"{100 * (loss.mean - base.mean) / base.mean:+.2f} %" if loss and base and not (cell == "jump" and w == 0)
               else "-")
        first = Stat([r["history"][0]["val_zeta_L"] for r in rs if r["history"]
                      and isinstance(r["history"][0].get("val_zeta_L"), (int, float))])
        lines.append(f"| {exp} | {cell} | {w:g} | {len(rs)} | {_ms(loss, 4, n=False)} | {rel} | "
                     f"{_ms(first if first.n else None, 3, n=False)} (step {rs[0]['history'][0]['step'] if rs[0]['history'] else '-'}) | "
                     f"{_ms(stat(rs, 'val_zeta_L'), 3, n=False)} | {_ms(stat(rs, 'psi_L'), 4, n=False)} | "
                     f"{_ms(stat(rs, 'induction_accuracy'), 3, n=False)} |")
    return "\n".join(lines)


def _ms_short(s: Stat | None, digits: int) -> str:
    if s is None:
        return "-"
    return f"**{_f(s.mean, digits)} ± {_f(s.sd, digits)}**" if s.sd is not None else f"**{_f(s.mean, digits)}**"


def e1_table(e1: list[dict]) -> str:
    lines = ["| model | layers | tokens | ζ_L | ζ_L post-norm | Ψ_L | Ψ_L post-norm | max Ψ at layer | Ψ per layer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for m in e1:
        lines.append(f"| {m['name']} | {len(m['psi'])} | {m['tokens']:,} | {_f(m['zeta_L'], 2)} | "
                     f"{_f(m['zeta_L_post_norm'], 2)} | {_f(m['psi'][-1], 4)} | {_f(m['psi_post_norm_L'], 4)} | "
                     f"{m['argmax_layer']} | {' '.join(f'{v:.3f}' for v in m['psi'])} |")
    return "\n".join(lines)


def lens_table(results: list[dict]) -> str:
    """Mean logit-lens loss per layer (h_0 = embeddings .. h_L) per cell."""
    rows = [(k, stat_list(rs, "lens_loss")) for k, rs in cells(complete(results)).items()]
    rows = [(k, v) for k, v in rows if v]
    if not rows:
        return ""
    n = max(len(v) for _, v in rows)
    head = " | ".join("emb" if i == 0 else f"h{i}" for i in range(n))
    lines = [f"| experiment | JREG | λ | {head} |", "|---|---|---:|" + "---:|" * n]
    for (exp, cell, w), v in rows:
        lines.append(f"| {exp} | {cell} | {w:g} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    return "\n".join(lines)


def stat_list(results: list[dict], key: str) -> list[float] | None:
    """Element-wise mean over seeds of a list-valued metric (None when a run lacks it or lengths differ)."""
    vals = [r.get(key) for r in results]
    if not vals or any(not v for v in vals) or len({len(v) for v in vals}) != 1:
        return None
    return [statistics.fmean(col) for col in zip(*vals)]


# ----------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_zeta_over_tokens(results: list[dict], experiment: str, path: Path) -> Path | None:
    """Validation zeta_L against tokens seen, one colour per cell, one line per seed."""
    rs = [r for r in results if r["experiment"] == experiment and r["history"]]
    if not rs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = list(cells(rs))
    for i, key in enumerate(keys):
        for j, r in enumerate(cells(rs)[key]):
            h = [p for p in r["history"] if p.get("val_zeta_L") is not None]
            ax.plot([p["tokens"] for p in h], [p["val_zeta_L"] for p in h], color=f"C{i % 10}",
                    ls=["-", "--", ":", "-."][j % 4], label=f"{key[1]} λ={key[2]:g}" if j == 0 else None)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(r"validation $\zeta_L$")
    ax.set_title(f"{experiment}: final-layer jump during training (one line per seed)")
    return save_figure(fig, ax, path, legend_fontsize=8)


def _base_runs(results: list[dict], experiment: str) -> list[dict]:
    return sorted((r for r in complete(results) if r["experiment"] == experiment and r["cell"] == "jump"
                   and r["jreg.weight"] == 0 and r["history"]), key=lambda r: r["seed"])


def plot_e2_zeta(results: list[dict], experiment: str, path: Path) -> Path | None:
    """E2: zeta_L of the lambda = 0 runs against tokens, on the training batch and the fixed validation batch."""
    base = _base_runs(results, experiment)
    if not base:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, r in enumerate(base):
        h = r["history"]
        ax.plot([p["tokens"] for p in h], [p["val_zeta_L"] for p in h], color=f"C{j}", marker=".",
                label=f"seed {r['seed']}, validation batch")
        ax.plot([p["tokens"] for p in h], [p["zeta_L"] for p in h], color=f"C{j}", ls="--", alpha=0.7,
                label=f"seed {r['seed']}, training batch")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(r"$\zeta_L$")
    ax.set_title(f"{experiment}, λ = 0: the final-layer jump during training")
    return save_figure(fig, ax, path, legend_fontsize=8)


def plot_psi_over_training(results: list[dict], experiment: str, path: Path) -> Path | None:
    """E2: Psi per layer of the first lambda = 0 run at up to 6 points of training, training batch (left) and
    fixed validation batch (right)."""
    from llama_jreg.analysis.plots import _pick_rows

    base = _base_runs(results, experiment)
    if not base:
        return None
    r = base[0]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    picked = _pick_rows([p for p in r["history"] if p.get("val_psi") and p.get("psi")], None, default_n=6)
    cmap = plt.get_cmap("viridis")
    for ax, key, name in ((axes[0], "psi", "training batch"), (axes[1], "val_psi", "validation batch")):
        for i, p in enumerate(picked):
            ax.plot(range(1, len(p[key]) + 1), p[key], marker="o", ms=3, color=cmap(i / max(1, len(picked) - 1)),
                    label=f"{p['tokens']:,} tokens")
        ax.set_xlabel("layer l")
        _integer_x(ax)
        ax.set_title(f"{experiment}, λ = 0, seed {r['seed']}: {name}", fontsize=9)
    axes[0].set_ylabel(r"$\Psi_l$")
    axes[0].grid(alpha=0.3)
    return save_figure(fig, axes[1], path, legend_fontsize=8)


def e2_table(results: list[dict], experiment: str) -> str:
    """E2: per logged step, the lambda = 0 runs' zeta_L (training / validation batch) and the validation Psi of
    the last two layers, mean over seeds."""
    base = _base_runs(results, experiment)
    if not base:
        return ""
    steps = sorted(set.intersection(*[{p["step"] for p in r["history"]} for r in base]))
    lines = ["| step | tokens | ζ_L (train batch) | ζ_L (validation) | Ψ_L-1 (validation) | Ψ_L (validation) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for st in steps:
        pts = [next(p for p in r["history"] if p["step"] == st) for r in base]
        mean = lambda f: statistics.fmean(f(p) for p in pts)  # noqa: E731
        lines.append(f"| {st} | {pts[0]['tokens']:,} | {mean(lambda p: p['zeta_L']):.3f} | "
                     f"{mean(lambda p: p['val_zeta_L']):.3f} | {mean(lambda p: p['val_psi'][-2]):.4f} | "
                     f"{mean(lambda p: p['val_psi'][-1]):.4f} |")
    return "\n".join(lines)


def plot_profiles(results: list[dict], experiment: str, key: str, ylabel: str, path: Path,
                  start: int = 1, skip: int = 0) -> Path | None:
    """A list-valued metric (final Psi, lens loss) per layer, mean over seeds, one line per cell; the list's
    element i is layer ``start + i``, the first ``skip`` elements are left out."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for i, ((exp, cell, w), rs) in enumerate(cells([r for r in results if r["experiment"] == experiment]).items()):
        v = stat_list(rs, key)
        if v:
            ax.plot(range(start + skip, start + len(v)), v[skip:], marker="o", ms=3, color=f"C{i % 10}",
                    label=f"{cell} λ={w:g} (n={len(rs)})")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("layer l" if start else "layer l (0 = embeddings)")
    _integer_x(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{experiment}: {ylabel}, mean over seeds")
    return save_figure(fig, ax, path, legend_fontsize=8)


def plot_vs_lambda(results: list[dict], key: str, ylabel: str, path: Path) -> Path | None:
    """A scalar metric against lambda (jump mode), mean and seed range per experiment (symlog x axis)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ws_all = []
    drawn = 0
    for i, exp in enumerate(sorted({r["experiment"] for r in results})):
        pts = [(w, stat(rs, key)) for (e, cell, w), rs in cells(results).items() if e == exp and cell == "jump"]
        pts = [(w, s) for w, s in pts if s is not None]
        if not pts:
            continue
        ws = [w for w, _ in pts]
        ws_all += ws
        ax.errorbar(ws, [s.mean for _, s in pts], yerr=[[s.mean - s.lo for _, s in pts], [s.hi - s.mean for _, s in pts]],
                    marker="o", capsize=3, color=f"C{i}", label=exp)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("symlog", linthresh=min([w for w in ws_all if w > 0] or [1e-2]))
    ax.set_xlabel("jreg.weight λ (jreg=jump)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} vs λ (mean, bars: seed range)")
    return save_figure(fig, ax, path, legend_fontsize=8)


def make_plots(results: list[dict], e1: list[dict], fig_dir: Path) -> dict[str, Path]:
    """Every figure of the report, by name; figures with no data are left out."""
    from llama_jreg.analysis.jump import plot_psi

    fig_dir.mkdir(parents=True, exist_ok=True)
    results = complete(results)
    figs: dict[str, Path | None] = {}
    for m in e1:
        figs[f"e1_{m['slug']}"] = plot_psi(m, fig_dir / f"e1_psi_{m['slug']}.png", m["name"])
    for exp in sorted({r["experiment"] for r in results}):
        figs[f"zeta_{exp}"] = plot_zeta_over_tokens(results, exp, fig_dir / f"zeta_L_over_tokens_{exp}.png")
        if STAGE.get(exp) != "E4":  # E2 (emergence from scratch) only: continued runs start from a trained model
            figs[f"e2_zeta_{exp}"] = plot_e2_zeta(results, exp, fig_dir / f"e2_zeta_L_{exp}.png")
            figs[f"psi_train_{exp}"] = plot_psi_over_training(results, exp,
                                                              fig_dir / f"psi_during_training_{exp}.png")
        figs[f"psi_final_{exp}"] = plot_profiles(results, exp, "val_psi", r"final validation $\Psi_l$",
                                                 fig_dir / f"psi_final_{exp}.png")
        figs[f"lens_{exp}"] = plot_profiles(results, exp, "lens_loss", "logit-lens loss (h_1..h_L)",
                                            fig_dir / f"lens_{exp}.png", start=0, skip=1)
        figs[f"ind_lens_{exp}"] = plot_profiles(results, exp, "induction_lens_accuracy",
                                                "logit-lens induction accuracy",
                                                fig_dir / f"induction_lens_{exp}.png", start=0)
    figs["val_loss"] = plot_vs_lambda(results, "val_loss", "validation loss", fig_dir / "val_loss_vs_lambda.png")
    figs["val_zeta"] = plot_vs_lambda(results, "val_zeta_L", r"validation $\zeta_L$", fig_dir / "val_zeta_L_vs_lambda.png")
    figs["induction"] = plot_vs_lambda(results, "induction_accuracy", "induction accuracy",
                                       fig_dir / "induction_accuracy_vs_lambda.png")
    return {k: v for k, v in figs.items() if v is not None}


# ----------------------------------------------------------------------------------------------- report


def machine() -> str:
    """CPU model name and core count (``/proc/cpuinfo``), plus the CUDA device when there is one."""
    import os

    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{name}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - the description only
        pass
    return desc


TAGS = (("supports", "What our numbers support"), ("contradicts", "What our numbers contradict"),
        ("noise", "Where seed noise is too large to tell"))


def render_report(meta: dict, results: list[dict], e1: list[dict], figs: dict[str, Path], link) -> str:
    """The Markdown report. ``meta``: title, command, argv, machine, date, wall, sweeps (list of
    (name, command line)), notes (list of lines). ``link(path) -> str`` makes a figure's link."""
    def img(key: str, alt: str) -> str:
        return f"![{alt}]({link(figs[key])})\n" if key in figs else ""

    seeds = sorted({r["seed"] for r in results})
    exps = sorted({r["experiment"] for r in results})
    out = [f"# {meta['title']}", "",
           f"* **Command**: `{meta['command']}`" + (f" (this report written by `{meta['argv']}`)" if meta.get("argv") else ""),
           f"* **Machine**: {meta['machine']}",
           f"* **Date**: {meta['date']}",
           f"* **Seeds**: {', '.join(map(str, seeds)) or '-'}; {len(results)} runs "
           f"({sum(1 for r in results if r['complete'])} complete)",
           f"* **Wall time**: {meta['wall']}", ""]
    out += [f"* {n}" for n in meta.get("notes", [])]
    out += ["", "## Findings (computed from the numbers below)", "", "The claims checked:", ""]
    out += [f"* **{k}**: {v}" for k, v in CLAIMS.items()]
    out += ["", COMPARE_RULE, ""]
    found = findings(results, e1)
    for tag, title in TAGS:
        lines = [s for t, s in found if t == tag]
        out += [f"### {title}", ""] + ([f"* {s}" for s in lines] or ["* nothing"]) + [""]
    if results:
        out += ["## Summary", "",
                "Per cell, mean ± sample s.d. over the seeds of the complete runs: final validation loss and its "
                "change against the λ = 0 cell of the same experiment, validation ζ_L at the first measurement "
                "(step 0 for continued pre-training: the source model) and at the end, final Ψ_L on the validation "
                "batch, and the induction accuracy.", "", summary_table(results), ""]
        out += ["## Headline table", "",
                "Final validation loss, validation ζ_L and Ψ_L (the fixed validation batch, last measurement), the "
                "mean logit-lens loss of layers 1..L-1, the oracle early-exit saving (fraction of blocks) and the "
                "induction accuracy (2nd+ trigger outputs), per run and as mean ± sample s.d. over the seeds of "
                "the complete runs (a run still short of its last step is marked running and left out of every "
                "mean, comparison and figure).", "",
                headline_table(results), ""]
    if e1:
        out += ["## E1: the jump in open-weight models", "",
                "`llama-jreg jump MODEL --text TEXT`: Ψ_l = (1 − cos(h_{l−1}, h_l))/2 averaged over the tokens, "
                "ζ_L = 100·max(0, Ψ_L − Ψ_{L−1}); post-norm: Ψ_L measured after the final norm.", "",
                e1_table(e1), ""]
        out += [img(f"e1_{m['slug']}", f"Psi per layer of {m['name']}") for m in e1]
    for exp in exps:
        rs = [r for r in results if r["experiment"] == exp]
        title = "continued pre-training (E4)" if STAGE.get(exp) == "E4" else "emergence (E2) and the λ sweep (E3)"
        sweeps = ", ".join(f"`{n}/`" for n in sorted({Path(r["run_dir"]).parent.name for r in rs}))
        out += [f"## {exp}: {title}", "",
                f"{len(rs)} runs, {rs[0]['tokens']:,} tokens each at the end ({rs[0]['max_steps']} steps); run "
                f"dirs in {sweeps}.", ""]
        t = e2_table(rs, exp) if STAGE.get(exp) != "E4" else ""
        if t:
            out += [f"E2, λ = 0 (mean over {len(_base_runs(rs, exp))} seed(s)): the jump against tokens seen.", "",
                    img(f"e2_zeta_{exp}", f"E2 zeta_L, {exp}"), img(f"psi_train_{exp}", f"Psi during training, {exp}"),
                    t, "", "E3: every cell.", ""]
        out += [img(f"zeta_{exp}", f"zeta_L over tokens, {exp}"),
                img(f"psi_final_{exp}", f"final Psi per layer, {exp}"), img(f"lens_{exp}", f"logit lens, {exp}"),
                img(f"ind_lens_{exp}", f"induction accuracy per layer, {exp}")]
        t = lens_table(rs)
        if t:
            out += ["Logit-lens loss per layer (mean over seeds; emb = the embeddings, h_L = the model's output):",
                    "", t, ""]
    if results:
        out += ["## Against λ", "", img("val_loss", "validation loss vs lambda"),
                img("val_zeta", "validation zeta_L vs lambda"), img("induction", "induction accuracy vs lambda")]
    out += ["## How it was run", "", "Each sweep is one public-CLI command (`resume=auto`: a rerun reopens finished "
            "runs and continues interrupted ones):", ""]
    for name, cmd in meta.get("sweeps", []):
        out += [f"* `{name}`: `{cmd}`"]
    out += ["", "Per run, `llama-jreg eval RUN_DIR --json F` (logit lens on the run's own validation set) and "
            "`llama-jreg jump` for E1; every number above is read from the runs' `metrics.jsonl` and these JSON files "
            "(all of it in `results.json`).", ""]
    return "\n".join(line for line in out if line is not None).rstrip() + "\n"
