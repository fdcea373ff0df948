"""The study's seed statistics: a metric of a cell over its seeds (:class:`Stat`) and the test of one cell
against another (:class:`Test`, :func:`compare`; the rule is :data:`COMPARE_RULE`, printed in the report).

The distributions (Student's t, the sign-flip permutation test, Holm's adjustment) come from
:mod:`llama_jreg.analysis.stats`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from llama_jreg.analysis.stats import sign_flip_p, t_quantile, t_sf2

ALPHA = 0.05  # the two-sided level of every test, after Holm's correction within a claim

_SAYS = {"higher": "higher", "lower": "lower", "noise": "not resolved", "one seed": "one seed, spread unknown",
         "no spread": "no spread, no test", "identical": "identical"}


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
