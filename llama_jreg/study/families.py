"""The v2 study's statistics as registered (docs/preregistration.md, "Tests"): the readings of every run
(:func:`collect`), the 35 tests in 6 families paired by seed (:func:`build_tests`), Holm within each family for
the t p-values and for the sign-flip p-values, and the decision rule (:func:`decide`): a test is resolved when
both adjusted p-values are below 0.05; E4 (5 seeds) on the t-test alone, labelled so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from llama_jreg.analysis.stats import holm, paired, sign_flip, wilson
from llama_jreg.rows import read_metrics
from llama_jreg.study.design import Design, jobs, screen_outcome, screen_reading, selection
from llama_jreg.study.results import read_json

ALPHA = 0.05
FAMILIES = {"C2": 3, "C3": 12, "P": 2, "C4": 8, "C5": 8, "C6": 2}
T_ONLY = "t-test only (normality assumed)"
# which stream each penalty acts on (the C3 reading "lowers the jump" is read on it)
ACTS_ON = {"paper": "D_post", "jump": "D"}
METRIC_NAMES = {"D": "D (pre-norm)", "D_post": "D^post (post-norm)", "J2": "J2 (last two layers)",
                "val_loss": "val loss", "loss_late": "val loss, mean of the last 50 steps",
                "gap_narrowing": "loss gap, late − early", "lens_mid": "unit-gain lens loss, middle layers",
                "saving": "early-exit saving at h ≤ L−2", "cloze": "cloze accuracy"}


# ------------------------------------------------------------------------------------------------ readings


def eval_measures(ev: dict) -> dict:
    """The registered readings of one ``llama-jreg eval --unit-gain-lens`` JSON: D, D^post, J2, the hinges for
    reference, val loss, the unit-gain lens loss of the middle layers h_2..h_{L-2} and the early-exit saving
    at h <= L-2 (and the usual lens's, secondary)."""
    j = ev["jump"]
    unit = ev["unit_gain_lens"]
    L = len(ev["lens"]) - 1
    mid = range(2, L - 1)  # h_2 .. h_{L-2}

    def mean_mid(rows):
        return statistics.fmean(rows[k]["loss"] for k in mid) if len(mid) else None

    return {"D": j["D"], "D_post": j["D_post_norm"], "J2": j["J2"], "zeta_L": j["zeta_L"],
            "zeta_L_post": j["zeta_L_post_norm"], "psi": j["psi"], "val_loss": ev["loss"],
            "lens_mid": mean_mid(unit["lens"]), "lens_mid_usual": mean_mid(ev["lens"]),
            "saving": unit["saturation"]["early_exit_blocks_saved_upto_L-2"],
            "saving_usual": ev["saturation"].get("early_exit_blocks_saved_upto_L-2")}


def curve_measures(run: Path, design: Design) -> dict:
    """E4 from the run's logged rows: the validation-loss curve, the late mean and early mean (the registered
    steps), cloze at step 0 and at the end."""
    rows = read_metrics(run / "metrics.jsonl")
    curve = {r["step"]: r["val_loss"] for r in rows if r.get("kind") == "eval" and "val_loss" in r}
    cloze = {r["step"]: r.get("accuracy") for r in rows if r.get("kind") == "task" and r.get("task") == "cloze"}

    def mean_at(steps):
        return statistics.fmean(curve[s] for s in steps) if all(s in curve for s in steps) else None

    end = max(cloze) if cloze else None
    return {"curve": dict(sorted(curve.items())), "loss_late": mean_at(design.e4_late),
            "loss_early": mean_at(design.e4_early), "cloze": cloze.get(end) if end else None,
            "cloze_0": cloze.get(0), "cloze_n": next((r.get("n") for r in rows if r.get("kind") == "task"), None)}


def collect(design: Design, out: Path) -> dict:
    """Every finished, evaluated run's readings: ``runs[(stage, arm)][seed]``, the screening's logged readings
    ``screen[seed]`` (first and end measurement, grew) and the screening outcome."""
    outcome = screen_outcome(design, out)
    todo, _ = jobs(design, outcome)
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for job in todo:
        ev = read_json(job.eval_json(out))
        if ev is None or "unit_gain_lens" not in ev:
            continue
        rec = eval_measures(ev)
        if job.stage == "continued":
            rec.update(curve_measures(job.run_dir(out), design))
        runs.setdefault((job.stage, job.arm), {})[job.seed] = rec
    screen = {}
    for s, g in outcome.items():
        reading = screen_reading(out / "screen" / f"seed_{s}")
        screen[s] = {**reading, "grew": g}
    return {"runs": runs, "screen": screen, "outcome": outcome}


# ------------------------------------------------------------------------------------------------- tests


@dataclass
class RegTest:
    """One registered test: ``a − b`` paired by seed (``b`` None: ``a`` itself against 0)."""

    family: str
    label: str
    metric: str
    a: dict[int, float]
    b: dict[int, float] | None
    ref: dict[int, float] | None = None  # the reference arm for the percentage
    e4: bool = False
    direct: bool | None = None           # C5: the penalty's R contains the stream read
    arm: str = ""
    vs: str = ""
    seeds: list[int] = field(default_factory=list)
    diffs: list[float] = field(default_factory=list)
    stats: object = None                 # analysis.stats.Paired
    p_sign: float | None = None
    sign_how: str = ""
    p_holm: float | None = None
    p_sign_holm: float | None = None
    verdict: str = "missing"
    reading: str = ""

    def pair(self) -> None:
        b = self.b or {s: 0.0 for s in self.a}
        self.seeds = sorted(s for s in set(self.a) & set(b) if _ok(self.a[s]) and _ok(b[s]))
        self.diffs = [self.a[s] - b[s] for s in self.seeds]

    @property
    def percent(self) -> float | None:
        if not self.ref or not self.diffs:
            return None
        ref = [self.ref[s] for s in self.seeds if s in self.ref]
        m = statistics.fmean(ref) if ref else 0.0
        return 100 * statistics.fmean(self.diffs) / m if m > 0 else None  # of a mean <= 0: no meaning


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _col(runs: dict, stage: str, arm: str, key: str) -> dict[int, float]:
    return {s: r[key] for s, r in runs.get((stage, arm), {}).items() if _ok(r.get(key))}


def build_tests(data: dict, design: Design) -> list[RegTest]:
    """The 35 registered tests (docs/preregistration.md, "Tests"), in the registration's order."""
    runs, screen = data["runs"], data["screen"]
    growers = set(jobs_seeds(data, design, "arms"))
    base = {k: {s: v for s, v in _col(runs, "screen", "", k).items() if s in growers}
            for k in ("D", "D_post", "val_loss", "lens_mid", "saving")}
    tests: list[RegTest] = []
    for k in ("D", "D_post", "J2"):  # C2: end - first measurement of every screened seed
        first = {s: r["first"][k] for s, r in screen.items() if _ok(r["first"][k])}
        end = {s: r["end"][k] for s, r in screen.items() if _ok(r["end"][k])}
        tests.append(RegTest("C2", "E2 screening, end − first", k, end, first, ref=first, arm="λ = 0", vs="first"))
    for arm in ("paper", "jump"):  # C3
        for k in ("D", "D_post"):
            a = _col(runs, "arms", arm, k)
            tests.append(RegTest("C3", "E3 growing", k, a, _col(runs, "arms", "placebo", k),
                              ref=_col(runs, "arms", "placebo", k), arm=arm, vs="placebo"))
            tests.append(RegTest("C3", "E3 growing", k, a, base[k], ref=base[k], arm=arm, vs="λ = 0"))
    for arm in ("paper", "jump"):
        for k in ("D", "D_post"):
            b = _col(runs, "continued", "base", k)
            tests.append(RegTest("C3", "E4 continued", k, _col(runs, "continued", arm, k), b, ref=b, e4=True, arm=arm,
                              vs="λ = 0"))
    for k in ("D", "D_post"):  # P
        tests.append(RegTest("P", "E3 growing", k, _col(runs, "arms", "placebo", k), base[k], ref=base[k],
                          arm="placebo", vs="λ = 0"))
    tests += _c4(runs, base)
    for label, stage, b, e4 in (("E3 growing", "arms", base, False),
                                ("E4 continued", "continued", None, True)):  # C5
        for arm in ("paper", "jump"):
            for k in ("lens_mid", "saving"):
                ref = b[k] if b is not None else _col(runs, "continued", "base", k)
                tests.append(RegTest("C5", label, k, _col(runs, stage, arm, k), ref, ref=ref, e4=e4, arm=arm,
                                  vs="λ = 0", direct=arm == "jump"))
    for arm in ("paper", "jump"):  # C6
        b = _col(runs, "continued", "base", "cloze")
        tests.append(RegTest("C6", "E4 continued", "cloze", _col(runs, "continued", arm, "cloze"), b, ref=b, e4=True,
                          arm=arm, vs="λ = 0"))
    return tests


def _c4(runs: dict, base: dict) -> list[RegTest]:
    out = []
    for arm in ("paper", "jump"):
        out.append(RegTest("C4", "E3 growing", "val_loss", _col(runs, "arms", arm, "val_loss"), base["val_loss"],
                        ref=base["val_loss"], arm=arm, vs="λ = 0"))
    control_base = _col(runs, "screen", "", "val_loss")
    for arm in ("paper", "jump"):
        a = _col(runs, "control", arm, "val_loss")
        b = {s: v for s, v in control_base.items() if s in a}
        out.append(RegTest("C4", "E3 control (non-growing)", "val_loss", a, b, ref=b, arm=arm, vs="λ = 0"))
    late_b = _col(runs, "continued", "base", "loss_late")
    for arm in ("paper", "jump"):
        out.append(RegTest("C4", "E4 continued", "loss_late", _col(runs, "continued", arm, "loss_late"), late_b,
                        ref=late_b, e4=True, arm=arm, vs="λ = 0"))
    early_b = _col(runs, "continued", "base", "loss_early")
    for arm in ("paper", "jump"):
        late, early = _col(runs, "continued", arm, "loss_late"), _col(runs, "continued", arm, "loss_early")
        gap = {s: (late[s] - late_b[s]) - (early[s] - early_b[s]) for s in late
               if s in late_b and s in early and s in early_b}
        out.append(RegTest("C4", "E4 continued", "gap_narrowing", gap, None, e4=True, arm=arm, vs="0"))
    return out


def jobs_seeds(data: dict, design: Design, stage: str) -> list[int]:
    """The seeds the design gives ``stage`` from the screening outcome (arms: the first growers)."""
    sel = selection(design, data["outcome"])
    return sel.arm_seeds if stage == "arms" else sel.control_seeds


# --------------------------------------------------------------------------------------------- decision


def _sign_word(family: str, metric: str, lower: bool) -> str:
    """What a resolved direction means for the claim (the registration's "Which test decides")."""
    if family == "P":
        return "the jump falls under the placebo" if lower else "the jump rises under the placebo"
    if family == "C2":
        return "supports" if not lower else "contradicts"
    if family == "C5" and metric == "saving":
        return "supports" if not lower else "contradicts"
    if family == "C6":
        return "supports" if not lower else "contradicts"
    return "supports" if lower else "contradicts"  # C3, C4, C5 lens loss


def decide(tests: list[RegTest], alpha: float = ALPHA) -> list[RegTest]:
    """Pair, test, adjust (Holm within each family, t and sign-flip separately) and decide every test."""
    for t in tests:
        t.pair()
        m = FAMILIES[t.family]
        if len(t.diffs) >= 2:
            t.stats = paired(t.diffs, m=m)
            t.p_sign, t.sign_how = sign_flip(t.diffs)
    for fam in FAMILIES:
        got = [t for t in tests if t.family == fam]  # a missing test counts as p = 1: Holm's m is the family's
        pt = holm([t.stats.p if t.stats else 1.0 for t in got])
        ps = holm([t.p_sign if t.stats else 1.0 for t in got])
        for t, p, q in zip(got, pt, ps):
            if t.stats is not None:
                t.p_holm, t.p_sign_holm = p, q
    for t in tests:
        if t.stats is None:
            t.verdict, t.reading = "missing", f"missing (n = {len(t.diffs)})"
            continue
        t_ok, s_ok = t.p_holm < alpha, t.p_sign_holm < alpha
        resolved = t_ok if t.e4 else (t_ok and s_ok)
        lower = t.stats.mean < 0
        if resolved:
            t.verdict = "lower" if lower else "higher"
            t.reading = _sign_word(t.family, t.metric, lower)
        else:
            t.verdict = "not resolved"
            t.reading = ("not resolved (the t-test and the sign-flip test disagree)" if t_ok != s_ok and not t.e4
                         else "not resolved")
    return tests


def c3_summary(tests: list[RegTest]) -> dict[str, str]:
    """Per penalty: "lowers the jump" when lower than the placebo on the stream it acts on (E3), "on both
    streams" when lower than the placebo on both."""
    out = {}
    for arm in ("paper", "jump"):
        vs = {t.metric: t for t in tests if t.family == "C3" and t.arm == arm and t.vs == "placebo"}
        own = vs.get(ACTS_ON[arm])
        if own is None or own.verdict == "missing":
            out[arm] = "missing"
        elif own.verdict != "lower":
            out[arm] = f"not shown to lower the jump below the placebo on its stream ({METRIC_NAMES[ACTS_ON[arm]]})"
        elif all(t.verdict == "lower" for t in vs.values()):
            out[arm] = "lowers the jump below the placebo on both streams"
        else:
            out[arm] = f"lowers the jump below the placebo on the stream it acts on ({METRIC_NAMES[ACTS_ON[arm]]})"
    return out


def emergence(data: dict, design: Design) -> dict:
    """Growers / screened with the Wilson interval, over all screened seeds and over the new seeds alone."""
    oc = data["outcome"]
    res = {}
    for name, seeds in (("all", sorted(oc)), ("new", [s for s in sorted(oc) if s >= design.first_new_seed])):
        k = sum(oc[s] for s in seeds)
        res[name] = {"k": k, "n": len(seeds), "ci": wilson(k, len(seeds)) if seeds else None}
    return res


def direct_counts(tests: list[RegTest]) -> dict[str, dict[str, int]]:
    """C5 verdicts counted with and without the *direct* tag."""
    out = {"direct": {}, "not direct": {}}
    for t in tests:
        if t.family == "C5":
            tag = "direct" if t.direct else "not direct"
            out[tag][t.reading] = out[tag].get(t.reading, 0) + 1
    return out
