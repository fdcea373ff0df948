"""The reproduction study's analysis (``scripts/reproduce.py``): one result per run, seed statistics, findings
computed from the numbers, plots and the Markdown report.

* :func:`run_result` reads a run dir (``config.yaml``, ``metrics.jsonl``, ``provenance.json``) and, when given,
  the JSON of ``llama-jreg eval RUN_DIR --json F`` into one flat dict: every number is copied from those files
  (the last row of each in-training task evaluation becomes ``task_<name>_accuracy``).
* :func:`cells` groups results by (experiment, cell, lambda); :class:`Stat` gives mean, sample s.d. and the
  95 % confidence interval from the t distribution over the seeds; :func:`compare` tests two cells, paired by
  seed where it can (:class:`Test`; the rule is :data:`COMPARE_RULE`, printed in the report).
* :func:`readings` makes every comparison of the claims C2..C6 and applies Holm's correction within each claim;
  :func:`findings` turns them into sentences tagged ``supports``, ``contradicts``, ``mechanical`` (a better
  reading of a layer the penalty acts on directly: :func:`penalised_streams`), ``identical`` or ``noise``, and
  :func:`render_report` renders ``report.md`` with its figures.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from llama_jreg.analysis.jump import plot_psi
from llama_jreg.analysis.plots import _pick_rows, save_figure
from llama_jreg.analysis.stats import holm, sign_flip_p, t_quantile, t_sf2
from llama_jreg.train.provenance import read_provenance
from llama_jreg.train.rows import read_metrics

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
        lens = eval_json["lens"]
        res.update({
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
        })
        if "induction" in eval_json:
            res["induction_accuracy"] = eval_json["induction"]["accuracy"]
            res["induction_lens_accuracy"] = eval_json["induction"]["lens_accuracy"]
    return res


# ----------------------------------------------------------------------------------------------- seeds

ALPHA = 0.05  # the two-sided level of every test, after Holm's correction within a claim


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

    @property
    def ci95(self) -> tuple[float, float] | None:
        """The 95 % confidence interval of the mean, mean ± t_{0.975, n-1} · sd / sqrt(n) (None below 2 seeds)."""
        if self.n < 2:
            return None
        h = t_quantile(0.975, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - h, self.mean + h


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


def _flat(values: list[float], scale: float | None = None) -> bool:
    """No spread beyond float rounding: max - min <= 1e-12 of ``scale`` (default: the largest magnitude)."""
    scale = max(abs(v) for v in values) if scale is None else scale
    return max(values) - min(values) <= 1e-12 * scale


@dataclass
class Test:
    """Cell ``a`` against cell ``b`` on one metric: the difference and a two-sided t-test of it.

    ``paired`` (by seed): the per-seed differences d_s = a_s - b_s, t = mean(d) / (sd(d) / sqrt(n)) with n - 1
    degrees of freedom, plus the exact sign-flip p-value as a distribution-free check. ``unpaired`` (when fewer
    than 2 seeds are common): Welch's t with the Welch-Satterthwaite degrees of freedom. No p-value (no test)
    when a cell has one seed, or when the spread is zero but the values differ (sd = 0 cannot tell an effect
    from noise); ``identical`` when every compared value is equal (a verdict of its own, not a test)."""

    kind: str                   # "paired" | "unpaired"
    diff: float                 # paired: mean of the per-seed differences; unpaired: mean(a) - mean(b)
    n: int                      # paired: common seeds; unpaired: n_a + n_b
    se: float | None = None     # standard error of ``diff``
    df: float | None = None
    p: float | None = None      # two-sided t-test p-value; None: no test (see ``why_not``)
    why_not: str = ""           # "one seed" | "no spread"
    identical: bool = False
    diffs: list[float] | None = None  # paired only
    p_sign: float | None = None       # paired only: exact sign-flip p-value
    p_holm: float | None = None       # set by holm_adjust: the p-value adjusted within the claim
    m: int | None = None              # the number of tests in the claim's Holm family

    @property
    def t(self) -> float | None:
        return self.diff / self.se if self.se else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        if not self.se or not self.df:
            return None
        h = t_quantile(0.975, self.df) * self.se
        return self.diff - h, self.diff + h

    @property
    def verdict(self) -> str:
        """identical | higher | lower (adjusted p < ALPHA) | noise | one seed | no spread."""
        if self.identical:
            return "identical"
        if self.p is None:
            return self.why_not
        p = self.p_holm if self.p_holm is not None else self.p
        if p < ALPHA:
            return "higher" if self.diff > 0 else "lower"
        return "noise"

    def says(self, digits: int) -> str:
        """The test in words: what was compared, the numbers, and the verdict."""
        if self.kind == "paired":
            head = f"paired by seed (n = {self.n})"
            if self.identical:
                return f"{head}: identical values in every seed"
            up = sum(d > 0 for d in self.diffs)
            body = f"{self.diff:+.{digits}f}, higher in {up} of {self.n} seeds"
            if self.p is None:
                return f"{head}: {body}, the same difference in every seed (sd = 0): no test"
            body = f"{self.diff:+.{digits}f} ± {statistics.stdev(self.diffs):.{digits}f}, higher in {up} of {self.n}"
        else:
            head = f"unpaired (Welch, {self.n} runs)"
            if self.identical:
                return f"{head}: identical values"
            if self.p is None:
                return f"{head}: {self.diff:+.{digits}f}, " + ("one seed, spread unknown" if self.why_not == "one seed"
                                                                else "no spread in either cell") + ": no test"
            body = f"{self.diff:+.{digits}f}"
        lo, hi = self.ci95
        parts = [f"{body}, 95 % CI [{lo:+.{digits}f}, {hi:+.{digits}f}]", f"t({_g(self.df)}) = {self.t:+.2f}",
                 f"p {_p(self.p)}"]
        if self.p_holm is not None:
            parts.append(f"Holm-adjusted p {_p(self.p_holm)} (m = {self.m})")
        if self.p_sign is not None:
            parts.append(f"exact sign-flip p {_p(self.p_sign)}")
        return f"{head}: {', '.join(parts)}: {_SAYS[self.verdict]}"


def _g(df: float) -> str:
    return f"{df:.0f}" if float(df).is_integer() else f"{df:.1f}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def paired_test(a: dict[int, float], b: dict[int, float]) -> Test | None:
    """The paired t-test of ``a[s] - b[s]`` over the seeds both have (None below 2 common seeds)."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [a[s] - b[s] for s in seeds]
    n, m = len(d), statistics.fmean(d)
    if all(a[s] == b[s] for s in seeds):
        return Test("paired", 0.0, n, df=n - 1, identical=True, diffs=d)
    if _flat(d, max(abs(v) for s in seeds for v in (a[s], b[s]))):  # differences of rounding size count as 0
        return Test("paired", m, n, df=n - 1, why_not="no spread", diffs=d)
    se = statistics.stdev(d) / math.sqrt(n)
    return Test("paired", m, n, se=se, df=n - 1, p=t_sf2(m / se, n - 1), diffs=d, p_sign=sign_flip_p(d))


def welch_test(a: Stat, b: Stat) -> Test:
    """Welch's unpaired t-test of mean(a) - mean(b) (no test when a cell has one seed or neither spreads)."""
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Test("unpaired", diff, a.n + b.n, why_not="one seed", identical=a.lo == a.hi == b.lo == b.hi)
    if a.lo == a.hi == b.lo == b.hi:
        return Test("unpaired", 0.0, a.n + b.n, identical=True)
    va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
    if _flat(a.values) and _flat(b.values):
        return Test("unpaired", diff, a.n + b.n, why_not="no spread")
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va ** 2 / (a.n - 1) if va else 0.0) + (vb ** 2 / (b.n - 1) if vb else 0.0))
    return Test("unpaired", diff, a.n + b.n, se=se, df=df, p=t_sf2(diff / se, df))


def compare(a: dict[int, float], b: dict[int, float]) -> Test | None:
    """Values by seed of cell ``a`` against cell ``b``: paired by seed where they share at least 2 seeds (runs
    with the same seed share their initialisation and data order, so the seed-to-seed spread cancels), else
    Welch's unpaired test; None when a side has no value."""
    if not a or not b:
        return None
    return paired_test(a, b) or welch_test(Stat(list(a.values())), Stat(list(b.values())))


def by_seed(results: list[dict], key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in results if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])}


def holm_adjust(readings: list[Reading]) -> None:
    """Holm's correction within each claim: the tests (readings with a p-value) of one claim form a family of
    size m; each gets its adjusted p-value and m."""
    for claim in sorted({r.claim for r in readings}):
        tests = [r.test for r in readings if r.claim == claim and r.test.p is not None]
        for t, p in zip(tests, holm([t.p for t in tests])):
            t.p_holm, t.m = p, len(tests)


COMPARE_RULE = (
    "Each comparison of a cell with the λ = 0 cell of its experiment is a two-sided t-test at α = 0.05. Where the "
    "cells share at least 2 seeds it is paired by seed (runs with the same seed share their initialisation and "
    "data order, so seed-to-seed spread cancels): the per-seed differences, t with n − 1 degrees of freedom, "
    "their 95 % CI, and the exact sign-flip permutation p-value as a distribution-free check (all 2^n sign "
    "patterns; it cannot go below 2/2^n, 0.5 with 2 seeds, so it never resolves anything with fewer than 6 "
    "seeds); otherwise Welch's unpaired t-test. The verdict comes from the t-test after Holm's correction within "
    "each claim (the family of all the claim's tests, across experiments). No test is made when a cell has one "
    "seed or when the spread is zero but the values differ; compared values that are equal in every seed are "
    "reported as identical. With 2 seeds a test has 1 degree of freedom (t_0.975 = 12.71): only a difference "
    "about 9 times the spread of its per-seed differences passes, before the correction.")


# ----------------------------------------------------------------------------------------------- layers


def penalised_psi(r: dict) -> set[int]:
    """The layers l whose Ψ_l the run's penalty R contains (1-indexed; empty at λ = 0): ``final`` and ``paper``
    Ψ_L (``paper``: 1 - cos(h_{L-1}, h_L), pre- or post-norm); ``jump`` with l0 (-1 = L): Ψ_{l0-1} .. Ψ_L (R sums
    max(0, Ψ_l - Ψ_{l-1}) over l = l0..L); ``weighted``: every l with w_l > 0
    (all of them for ``uniform`` and ``linear``, the last ``last_k`` for ``last_k``)."""
    L = r.get("n_layers")
    if not L or not r["jreg.weight"] > 0:
        return set()
    mode = r["jreg.mode"]
    if mode in ("final", "paper"):
        return {L}
    if mode == "jump":
        l0 = int(r.get("jreg.l0", 2))
        return set(range(max(1, (L if l0 == -1 else l0) - 1), L + 1))
    if mode == "weighted":
        if r["jreg.weighting"] == "last_k":
            return set(range(L - int(r.get("jreg.last_k", 2)) + 1, L + 1))
        return set(range(1, L + 1))
    return set()


def penalised_streams(r: dict) -> set[int]:
    """The streams h_k (h_0 = embeddings .. h_L) the penalty is a direct function of: h_{l-1} and h_l for each
    penalised Ψ_l = (1 - cos(h_{l-1}, h_l)) / 2. A better logit-lens reading of such a stream is *mechanical*:
    the penalty pulls it towards its neighbour (for ``final``, h_{L-1} towards the output h_L) by construction."""
    return {k for ell in penalised_psi(r) for k in (ell - 1, ell)}


def exit_is_mechanical(r: dict) -> bool:
    """Whether a larger oracle early-exit saving is mechanical for a run: the penalty acts directly on every
    layer h_1..h_{L-1} an early exit can stop at (any ``jump`` penalty from l0 <= 2; ``final``/``paper`` on a
    2-layer model, where the only early exit, h_1 = h_{L-1}, is the stream the penalty pulls towards h_L)."""
    L = r["n_layers"]
    return L >= 2 and set(range(1, L)) <= penalised_streams(r)


def _layers(ks: list[int]) -> str:
    """``h2–h5`` for a contiguous run of layers, else ``h2, h4``."""
    ks = sorted(ks)
    if len(ks) > 2 and ks == list(range(ks[0], ks[-1] + 1)):
        return f"h{ks[0]}–h{ks[-1]}"
    return ", ".join(f"h{k}" for k in ks)


def _lens_mean(ks: list[int]):
    def f(r: dict) -> float | None:
        lens = r.get("lens_loss")
        return statistics.fmean(lens[k] for k in ks) if lens and len(lens) > max(ks) else None
    return f


def _derived(results: list[dict], fn) -> list[dict]:
    """Per run ``{"seed", "v"}`` with ``v = fn(run)`` (runs where it is None left out)."""
    return [{"seed": r["seed"], "v": v} for r in results if (v := fn(r)) is not None]


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


CLAIMS = {
    "C1": "pre-trained LMs rotate the hidden state little in the middle layers and jump at the last one (E1)",
    "C2": "without suppression the final-layer jump grows during pre-training (E2: the λ = 0 runs)",
    "C3": "JREG lowers the jump (E3, E4: λ > 0 against λ = 0)",
    "C4": "JREG does not cost validation loss (a higher loss contradicts it, a lower one supports it)",
    "C5": "with JREG the middle layers do more of the work: a lower logit-lens loss of the intermediate layers "
          "(layer 1, which reads the embeddings, apart from the middle layers 2..L-1) and a larger oracle "
          "early-exit saving; a better reading of a layer the penalty acts on directly, and a larger saving when it "
          "acts on every layer an exit can stop at, is mechanical (listed apart, it does not support the claim)",
    "C6": "JREG helps a task: induction accuracy (logit-lens evaluation) and the accuracies of the in-training "
          "task evaluations (e.g. induction, cloze)",
}
STAGE = {"continued": "E4"}  # experiments from scratch are E3
_SAYS = {"higher": "higher", "lower": "lower", "noise": "not resolved", "one seed": "one seed, spread unknown",
         "no spread": "no spread, no test", "identical": "identical"}


@dataclass
class Reading:
    """One comparison of the findings: claim, what is compared (``text``), the test, the direction that
    supports the claim (``good``), and whether the penalty acts on the compared layers directly."""

    claim: str
    text: str
    test: Test
    good: str                # "lower" | "higher"
    digits: int = 3
    mechanical: bool = False
    note: str = ""
    key: tuple = ()          # (experiment, cell, weight, metric) for lookups (summary table)

    @property
    def tag(self) -> str:
        """supports | contradicts | mechanical | identical | noise."""
        v = self.test.verdict
        if v == "identical":
            return "identical"
        if v not in ("higher", "lower"):
            return "noise"
        if v != self.good:
            return "contradicts"
        return "mechanical" if self.mechanical else "supports"

    def sentence(self) -> str:
        return f"{self.text}: {self.test.says(self.digits)}{self.note}."


def readings(results: list[dict]) -> list[Reading]:
    """Every comparison of the findings C2..C6 (complete runs only), Holm-adjusted within each claim."""
    out: list[Reading] = []
    results = complete(results)
    by_cell = cells(results)
    for exp in sorted({r["experiment"] for r in results}):
        base = by_cell.get((exp, "jump", 0.0))
        if not base:
            continue
        stage = STAGE.get(exp, "E3")
        if stage == "E3":  # emergence from scratch: first vs last logged validation zeta_L at lambda = 0
            first = {r["seed"]: r["history"][0]["val_zeta_L"] for r in base
                     if r["history"] and isinstance(r["history"][0].get("val_zeta_L"), (int, float))}
            t = compare(by_seed(base, "val_zeta_L"), first)
            if t is not None:
                out.append(Reading(
                    "C2", f"C2 · E2, {exp}, λ = 0: validation ζ_L {_ms(Stat(list(first.values())))} at the first "
                          f"measurement ({base[0]['history'][0]['tokens']:,} tokens), "
                          f"{_ms(stat(base, 'val_zeta_L'))} at the end ({base[0]['tokens']:,} tokens)",
                    t, "higher", key=(exp, "jump", 0.0, "C2")))
        for (e, cell, w), rs in by_cell.items():
            if e != exp or (cell == "jump" and w == 0.0):
                continue
            where = f"{stage}, {exp}, {cell} λ = {w:g}"
            checks = [("C3", "val_zeta_L", "validation ζ_L", 3, "lower", False, None),
                      ("C4", "val_loss", "validation loss", 4, "lower", False, None)]
            checks += _lens_checks(rs, base)
            checks += [("C5", "early_exit_saving", "oracle early-exit saving (fraction of blocks)", 3, "higher",
                        exit_is_mechanical(rs[0]), None),
                       ("C6", "induction_accuracy", "induction accuracy (eval)", 3, "higher", False, None)]
            checks += [("C6", f"task_{name}_accuracy", f"{name} accuracy (task evaluation, step "
                        f"{rs[0].get(f'task_{name}_step', '-')})", 3, "higher", False, None)
                       for name in sorted({n for r in rs + base for n in r.get("tasks", [])})]
            for claim, key, label, digits, good, mech, fn in checks:
                ra = _derived(rs, fn) if fn else rs
                rb = _derived(base, fn) if fn else base
                k = "v" if fn else key
                a, b = stat(ra, k), stat(rb, k)
                t = compare(by_seed(ra, k), by_seed(rb, k))
                if a is None or b is None or t is None:
                    continue
                rel = f", {100 * (a.mean - b.mean) / abs(b.mean):+.2f} %" if key == "val_loss" and b.mean else ""
                note = ""
                if stage == "E4" and key == "val_zeta_L":  # continued pre-training starts from a measured jump
                    s0 = Stat([r["history"][0]["val_zeta_L"] for r in rs if r["history"]])
                    note = f"; at step {rs[0]['history'][0]['step']} it was {_ms(s0, digits)}" if s0.n else ""
                if key.startswith("lens_"):
                    note = _largest_layer_change(rs, base, key)
                out.append(Reading(claim, f"{claim} · {where}: {label} {_ms(a, digits)} vs {_ms(b, digits)} at "
                                          f"λ = 0 ({a.mean - b.mean:+.{digits}f}{rel})"
                                          + ((" [mechanical: the penalty acts on every layer an exit can stop at]"
                                              if key == "early_exit_saving" else
                                              " [mechanical: the penalty acts on these layers directly]")
                                             if mech else ""),
                                   t, good, digits, mech, note, key=(exp, cell, w, key)))
    holm_adjust(out)
    return out


def _lens_checks(rs: list[dict], base: list[dict]) -> list[tuple]:
    """C5's logit-lens readings of a cell: layer 1 alone, then the middle layers 2..L-1 split into those the
    cell's penalty does not act on and those it acts on directly (mechanical), each as a mean over its layers."""
    lens = [r.get("lens_loss") for r in rs + base]
    if not all(lens) or len({len(v) for v in lens}) != 1:
        return []
    L = len(lens[0]) - 1
    acted = penalised_streams(rs[0])
    out = [("C5", "lens_h1", "logit-lens loss of layer 1 (h1)", 3, "lower", 1 in acted, _lens_mean([1]))] if L >= 2 \
        else []
    mid = list(range(2, L))
    for ks, mech in (([k for k in mid if k not in acted], False), ([k for k in mid if k in acted], True)):
        if ks:
            out.append(("C5", f"lens_mid_{'acted' if mech else 'free'}",
                        f"logit-lens loss of the middle layers {_layers(ks)} (mean)", 3, "lower", mech,
                        _lens_mean(ks)))
    return out


def _largest_layer_change(rs: list[dict], base: list[dict], key: str) -> str:
    """For a multi-layer lens reading: the layer whose mean loss changed most (so that one layer's large change
    is not hidden in a mean)."""
    if key == "lens_h1":
        return ""
    a, b = stat_list(rs, "lens_loss"), stat_list(base, "lens_loss")
    acted = penalised_streams(rs[0])
    ks = [k for k in range(2, len(a) - 1) if (k in acted) == key.endswith("acted")]
    if len(ks) < 2:
        return ""
    k = max(ks, key=lambda k: abs(a[k] - b[k]))
    return f"; largest change of one layer: h{k} {a[k] - b[k]:+.3f}"


def findings(results: list[dict], e1: list[dict] | None = None) -> list[tuple[str, str]]:
    """(tag, sentence) pairs, tag in supports | contradicts | mechanical | identical | noise, each sentence
    naming its claim (:data:`CLAIMS`); every number is taken from ``results`` (per-run dicts of
    :func:`run_result`) and ``e1`` (``llama-jreg jump --json`` results with a ``name``)."""
    out: list[tuple[str, str]] = []
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
    out += [(r.tag, r.sentence()) for r in readings(results)]
    return out


def testing_summary(rds: list[Reading]) -> str:
    """How many comparisons the findings made and the false-positive rate the rule implies."""
    tested = [r for r in rds if r.test.p is not None]
    fams = {}
    for r in tested:
        fams[r.claim] = fams.get(r.claim, 0) + 1
    ident = sum(r.test.identical for r in rds)
    untested = len(rds) - len(tested) - ident
    k = len(fams)
    resolved = sum(r.test.verdict in ("higher", "lower") for r in tested)
    per = ", ".join(f"{c}: m = {m}" for c, m in sorted(fams.items())) or "none"
    line = (f"**Comparisons made: {len(rds)}** ({len(tested)} tested, {ident} with identical values, {untested} "
            f"without a test: one seed or no spread); tests per claim ({per}); {resolved} resolved after the "
            "correction.")
    if k:
        line += (f" Holm's correction keeps the chance that a claim gets any false 'supports' or 'contradicts' "
                 f"from seed noise at most {100 * ALPHA:g} % when there is no effect; over the {k} claims tested "
                 f"at most {100 * min(1.0, k * ALPHA):.0f} % (Bonferroni; {100 * (1 - (1 - ALPHA) ** k):.0f} % "
                 f"if the claims were independent). Without the correction, {len(tested)} tests at "
                 f"{100 * ALPHA:g} % would call about {ALPHA * len(tested):.1f} differences by chance.")
    return line


# ----------------------------------------------------------------------------------------------- tables


def headline_table(results: list[dict]) -> str:
    """lambda x seed: val loss, val zeta_L, Psi_L, induction accuracy, then mean ± sd per cell."""
    keys = [("val_loss", 4), ("val_zeta_L", 3), ("psi_L", 4), ("lens_h1_loss", 3), ("lens_mid_loss", 3),
            ("early_exit_saving", 3), ("induction_accuracy", 3)]
    keys += [(f"task_{n}_accuracy", 3) for n in task_names(results)]
    lines = ["| experiment | JREG | λ | seed | val loss | val ζ_L | Ψ_L (val) | lens loss h1 | lens loss h2..h(L-1) | "
             "early-exit saving | induction acc. |" + "".join(f" task: {n} |" for n in task_names(results)),
             "|---|---|---:|---|" + "---:|" * len(keys)]
    for (exp, cell, w), rs in cells(results).items():
        for r in rs:
            lines.append(f"| {exp} | {cell} | {w:g} | {r['seed']}{'' if r['complete'] else ' (running)'} | "
                         + " | ".join(_f(r.get(k), d) for k, d in keys) + " |")
        done = complete(rs)
        if len(done) > 1:
            lines.append(f"| {exp} | {cell} | {w:g} | **mean ± sd** | "
                         + " | ".join(_ms_short(stat(done, k), d) for k, d in keys) + " |")
            lines.append(f"| {exp} | {cell} | {w:g} | 95 % CI (t, {len(done) - 1} df) | "
                         + " | ".join(_ci(stat(done, k), d) for k, d in keys) + " |")
    return "\n".join(lines)


def task_names(results: list[dict]) -> list[str]:
    """The in-training task evaluations any run logged (``kind=task`` rows), sorted."""
    return sorted({n for r in results for n in r.get("tasks", [])})


def _ci(s: Stat | None, digits: int) -> str:
    ci = s.ci95 if s is not None else None
    return "-" if ci is None else f"[{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def summary_table(results: list[dict]) -> str:
    """One row per cell (complete runs only): mean ± sd over the seeds of the final validation loss (and its
    change against the experiment's λ = 0 cell), the validation ζ_L at the first measurement and at the end,
    Ψ_L and, for the induction runs, the induction accuracy. The README shows this table (``headline.md``)."""
    tasks = task_names(complete(results))
    lines = ["| experiment | JREG | λ | seeds | val loss | vs λ = 0 | val ζ_L, first measurement | val ζ_L, end | "
             "Ψ_L (val) | induction acc. |" + "".join(f" task: {n} |" for n in tasks),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(tasks)]
    by_cell = cells(complete(results))
    loss_tests = {r.key[:3]: r.test for r in readings(results) if r.claim == "C4"}
    for (exp, cell, w), rs in by_cell.items():
        base = stat(by_cell.get((exp, "jump", 0.0), []), "val_loss")
        loss = stat(rs, "val_loss")
        rel = (f"{100 * (loss.mean - base.mean) / base.mean:+.2f} %" if loss and base and not (cell == "jump" and w == 0)
               else "-")
        if (exp, cell, w) in loss_tests:
            rel += f" ({_TESTED[loss_tests[exp, cell, w].verdict]})"
        first = Stat([r["history"][0]["val_zeta_L"] for r in rs if r["history"]
                      and isinstance(r["history"][0].get("val_zeta_L"), (int, float))])
        lines.append(f"| {exp} | {cell} | {w:g} | {len(rs)} | {_ms(loss, 4, n=False)} | {rel} | "
                     f"{_ms(first if first.n else None, 3, n=False)} (step {rs[0]['history'][0]['step'] if rs[0]['history'] else '-'}) | "
                     f"{_ms(stat(rs, 'val_zeta_L'), 3, n=False)} | {_ms(stat(rs, 'psi_L'), 4, n=False)} | "
                     f"{_ms(stat(rs, 'induction_accuracy'), 3, n=False)} |"
                     + "".join(f" {_ms(stat(rs, f'task_{n}_accuracy'), 3, n=False)} |" for n in tasks))
    return "\n".join(lines)


_TESTED = {"higher": "higher", "lower": "lower", "noise": "not resolved", "one seed": "one seed",
           "no spread": "no spread", "identical": "identical"}


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


def lens_change_table(results: list[dict]) -> str:
    """Per cell against the λ = 0 cell of its experiment: the change of the logit-lens loss of each
    intermediate layer h_1..h_{L-1} and of the oracle early-exit saving, the mean of the per-seed differences
    (of the means where fewer than 2 seeds are common). An improvement (lower loss) of a layer the cell's
    penalty acts on directly is marked (m): mechanical (:func:`penalised_streams`)."""
    by_cell = cells(complete(results))
    rows = []
    for (exp, cell, w), rs in by_cell.items():
        base = by_cell.get((exp, "jump", 0.0))
        if not base or (cell == "jump" and w == 0.0):
            continue
        a, b = stat_list(rs, "lens_loss"), stat_list(base, "lens_loss")
        if not a or not b or len(a) != len(b) or len(a) < 3:
            continue
        acted = penalised_streams(rs[0])
        cols = []
        for k in range(1, len(a) - 1):
            t = compare(by_seed(_derived(rs, _lens_mean([k])), "v"), by_seed(_derived(base, _lens_mean([k])), "v"))
            d = t.diff if t is not None else a[k] - b[k]
            cols.append(f"{d:+.3f}" + (" (m)" if k in acted and d < 0 else ""))
        t = compare(by_seed(rs, "early_exit_saving"), by_seed(base, "early_exit_saving"))
        mech = " (m)" if t is not None and t.diff > 0 and exit_is_mechanical(rs[0]) else ""
        cols.append(f"{t.diff:+.3f}{mech}" if t is not None else "-")
        rows.append((exp, cell, w, cols))
    if not rows:
        return ""
    n = max(len(c) for *_, c in rows) - 1
    lines = ["| experiment | JREG | λ | " + " | ".join(f"h{i}" for i in range(1, n + 1)) + " | early-exit saving |",
             "|---|---|---:|" + "---:|" * (n + 1)]
    for exp, cell, w, cols in rows:
        lines.append(f"| {exp} | {cell} | {w:g} | " + " | ".join(cols[:-1] + ["-"] * (n + 1 - len(cols)) + cols[-1:])
                     + " |")
    return "\n".join(lines)


def provenance_summary(results: list[dict]) -> str:
    """The distinct commits the runs came from (``provenance.json``, every start of each run), with the number
    of runs per commit; runs without the file are counted apart."""
    count: dict[str, int] = {}
    unknown = 0
    for r in results:
        starts = r.get("provenance") or []
        if not starts:
            unknown += 1
        for label in sorted({"not a git checkout" if p.get("commit") is None else
                             p["commit"][:12] + (" (dirty: uncommitted changes)" if p.get("dirty") else
                                                 " (clean)" if p.get("dirty") is False else "")
                             for p in starts}):
            count[label] = count.get(label, 0) + 1
    parts = [f"{label}: {n} run(s)" for label, n in sorted(count.items())]
    if unknown:
        parts.append(f"{unknown} run(s) without provenance.json")
    return "; ".join(parts) or "-"


def stat_list(results: list[dict], key: str) -> list[float] | None:
    """Element-wise mean over seeds of a list-valued metric (None when a run lacks it or lengths differ)."""
    vals = [r.get(key) for r in results]
    if not vals or any(not v for v in vals) or len({len(v) for v in vals}) != 1:
        return None
    return [statistics.fmean(col) for col in zip(*vals)]


# ----------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib  # deferred: ~0.4 s to import (scripts/bench_imports.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator  # deferred: ~0.4 s to import (scripts/bench_imports.py)

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


def e2_seed_table(results: list[dict], experiment: str) -> str:
    """E2 per seed: the validation zeta_L of each lambda = 0 run at each logged step (a mean over seeds can hide
    a jump that grows in some seeds and not in others), and how many seeds ended above their first value."""
    base = sorted(_base_runs(results, experiment), key=lambda r: r["seed"])
    if len(base) < 2:
        return ""
    steps = sorted(set.intersection(*[{p["step"] for p in r["history"]} for r in base]))
    if not steps:
        return ""
    at = {(r["seed"], p["step"]): p["val_zeta_L"] for r in base for p in r["history"]}
    if not any(at[r["seed"], st] for r in base for st in steps):
        return f"Validation ζ_L was 0 at every measurement of all {len(base)} seeds."
    lines = ["| step | " + " | ".join(f"seed {r['seed']}" for r in base) + " |", "|---:|" + "---:|" * len(base)]
    lines += [f"| {st} | " + " | ".join(f"{at[r['seed'], st]:.3f}" for r in base) + " |" for st in steps]
    grew = sum(at[r["seed"], steps[-1]] > at[r["seed"], steps[0]] for r in base)
    return "\n".join(lines) + (f"\n\nValidation ζ_L ended above its first measurement in {grew} of {len(base)} "
                               "seeds.")


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
        ("mechanical", "What the penalty does by construction (better readings of layers it acts on directly, earlier exits "
                        "where it acts on every layer)"),
        ("identical", "Where the compared runs gave identical numbers"),
        ("noise", "Where seed noise is too large to tell (or no test could be made)"))


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
           f"* **Wall time**: {meta['wall']}",
           f"* **Code** (the runs' `provenance.json`): {provenance_summary(results)}", ""]
    out += [f"* {n}" for n in meta.get("notes", [])]
    out += ["", "## Findings (computed from the numbers below)", "", "The claims checked:", ""]
    out += [f"* **{k}**: {v}" for k, v in CLAIMS.items()]
    out += ["", COMPARE_RULE, "", testing_summary(readings(results)), "",
            "A better logit-lens reading of a layer is *mechanical* when the cell's penalty is a direct function of "
            "that layer's stream h_k, i.e. contains Ψ_k or Ψ_(k+1) (`final`: Ψ_L, so h_(L-1); `jump` with l0: "
            "Ψ_(l0-1)..Ψ_L, every layer at the default l0 = 2; `weighted`: every Ψ_l with weight > 0): the penalty "
            "pulls such a stream towards its neighbour by construction, so its better reading does not support C5. "
            "For the same reason a larger oracle early-exit saving is mechanical when the penalty acts on every "
            "layer h_1..h_(L-1) an exit can stop at (`jump` at l0 = 2; `final` on a 2-layer model, whose only "
            "early exit is h_1 = h_(L-1)).",
            ""]
    found = findings(results, e1)
    for tag, title in TAGS:
        lines = [s for t, s in found if t == tag]
        out += [f"### {title}", ""] + ([f"* {s}" for s in lines] or ["* nothing"]) + [""]
    if results:
        out += ["## Summary", "",
                "Per cell, mean ± sample s.d. over the seeds of the complete runs: final validation loss and its "
                "change against the λ = 0 cell of the same experiment, validation ζ_L at the first measurement "
                "(step 0 for continued pre-training: the source model) and at the end, final Ψ_L on the validation "
                "batch, the induction accuracy of the logit-lens evaluation and, where the runs logged them, the "
                "accuracies of the in-training task evaluations (`task: NAME`, last evaluation). In brackets after "
                "the loss change: the verdict of its test (C4, Holm-adjusted; see the findings). The 95 % "
                "confidence intervals are in the headline table.", "", summary_table(results), ""]
        out += ["## Headline table", "",
                "Final validation loss, validation ζ_L and Ψ_L (the fixed validation batch, last measurement), the "
                "logit-lens loss of layer 1 and the mean of the middle layers 2..L-1, the oracle early-exit "
                "saving (fraction of blocks), the induction accuracy (2nd+ trigger outputs) and the task "
                "accuracies, per run and, over the seeds of the complete runs, as mean ± sample s.d. and the 95 % "
                "confidence interval of the mean from the t distribution with n − 1 degrees of freedom (a run "
                "still short of its last step is marked running and left out of every mean, comparison and "
                "figure).", "",
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
                    t, ""]
            t = e2_seed_table(rs, exp)
            if t:
                out += ([t, ""] if t.startswith("Validation") else ["The validation ζ_L of each λ = 0 seed:", "", t, ""])
            out += ["E3: every cell.", ""]
        out += [img(f"zeta_{exp}", f"zeta_L over tokens, {exp}"),
                img(f"psi_final_{exp}", f"final Psi per layer, {exp}"), img(f"lens_{exp}", f"logit lens, {exp}"),
                img(f"ind_lens_{exp}", f"induction accuracy per layer, {exp}")]
        t = lens_table(rs)
        if t:
            out += ["Logit-lens loss per layer (mean over seeds; emb = the embeddings, h_L = the model's output):",
                    "", t, ""]
        t = lens_change_table(rs)
        if t:
            out += ["Change against λ = 0 per intermediate layer (mean of the per-seed differences; layer 1 reads "
                    "the embeddings, h2..h(L-1) are the middle layers; (m): lower on a layer the penalty acts on "
                    "directly, mechanical) and of the oracle early-exit saving ((m): higher where the penalty acts on every "
                    "layer an exit can stop at):", "", t, ""]
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
