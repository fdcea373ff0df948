"""Small-sample statistics for the reproduction study, in plain Python (no SciPy dependency).

* :func:`t_quantile` / :func:`t_sf2`: Student's t distribution through the regularized incomplete beta
  function :func:`betainc` (a continued fraction), for confidence intervals and two-sided p-values;
* :func:`sign_flip_p`: the exact two-sided sign-flip permutation test of paired differences (all 2^n sign
  patterns), distribution-free, but unable to go below 2 / 2^n (0.5 with 2 seeds, 0.0625 with 5);
* :func:`sign_flip`: that test where 2^n is small enough to enumerate (n <= 16), else a seeded Monte Carlo
  estimate from random sign patterns;
* :func:`holm`: Holm's step-down adjustment of a family of p-values (family-wise error rate <= alpha);
* :func:`paired`: a paired t summary with the unadjusted 95 % interval, the Bonferroni interval of a family of
  m tests and the smallest difference the test had 80 % power to detect; :func:`wilson`: a binomial interval.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        # even step
        num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c if abs(1.0 + num / c) > tiny else tiny
        h *= d * c
        # odd step
        num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c if abs(1.0 + num / c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0 (got a={a}, b={b})")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b  # the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)


def t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with ``df`` degrees of freedom (df > 0)."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * t_sf2(t, df)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`, to about
    1e-12 relative); e.g. t_quantile(0.975, 1) = 12.706, t_quantile(0.975, 30) = 2.042."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1 (got {p})")
    if df <= 0:
        raise ValueError(f"t_quantile needs df > 0 (got {df})")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df == 1:
        return math.tan(math.pi * (p - 0.5))  # Cauchy: exact
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def sign_flip_p(diffs: list[float], max_n: int = 16) -> float | None:
    """Exact two-sided sign-flip permutation p-value of the mean of paired differences: the fraction of the
    2^n sign patterns whose |mean| is at least the observed one (the observed pattern included). None above
    ``max_n`` differences (2^n patterns)."""
    n = len(diffs)
    if n == 0 or n > max_n:
        return None
    obs = abs(sum(diffs))
    tol = 1e-12 * max(abs(x) for x in diffs) * n
    hits = sum(1 for signs in itertools.product((1.0, -1.0), repeat=n)
               if abs(sum(s * x for s, x in zip(signs, diffs))) >= obs - tol)
    return hits / 2 ** n


def holm(pvals: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sorted ascending, p_(i) becomes
    max_{j <= i} min(1, (m - j + 1) p_(j)); rejecting where the adjusted p < alpha keeps the family-wise error
    rate at most alpha."""
    m = len(pvals)
    order = sorted(range(m), key=lambda i: pvals[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvals[i]))
        out[i] = running
    return out


def sign_flip(diffs: list[float], draws: int = 100_000, seed: int = 0, max_exact: int = 16) -> tuple[float, str]:
    """Two-sided sign-flip p-value of the mean of paired differences and how it was computed: exact
    (:func:`sign_flip_p`) for n <= ``max_exact``, else a Monte Carlo estimate from ``draws`` random sign
    patterns (``random.Random(seed)``), (1 + hits) / (1 + draws) so that it is never 0."""
    exact = sign_flip_p(diffs, max_exact)
    if exact is not None:
        return exact, "exact"
    rng = random.Random(seed)
    obs = abs(sum(diffs))
    tol = 1e-12 * max(abs(x) for x in diffs) * len(diffs)
    hits = sum(1 for _ in range(draws) if abs(sum(x if rng.random() < 0.5 else -x for x in diffs)) >= obs - tol)
    return (1 + hits) / (1 + draws), f"monte carlo, {draws} patterns"


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k / n (95 % by default)."""
    if n <= 0:
        raise ValueError("wilson needs n > 0")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Paired:
    """A one-sample (paired) t summary of differences: ``ci`` the unadjusted 95 % t interval, ``ci_family`` the
    Bonferroni interval at 1 - alpha / m (the family of m tests), ``mde`` the smallest true mean difference
    the test had ``power`` to detect at the strictest Holm level alpha / m, from the observed spread."""

    n: int
    mean: float
    sd: float
    t: float
    df: int
    p: float
    ci: tuple[float, float]
    ci_family: tuple[float, float]
    mde: float


def paired(diffs: list[float], m: int = 1, alpha: float = 0.05, power: float = 0.8) -> Paired:
    """:class:`Paired` of ``diffs`` (n >= 2). Zero spread gives t = +-inf and p = 0 where the mean is not 0,
    t = 0 and p = 1 where it is."""
    n = len(diffs)
    if n < 2:
        raise ValueError("paired needs at least 2 differences")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    df = n - 1
    if se > 0:
        t = mean / se
        p = t_sf2(t, df)
    else:
        t, p = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    q, q_fam = t_quantile(1 - alpha / 2, df), t_quantile(1 - alpha / (2 * m), df)
    mde = (q_fam + t_quantile(power, df)) * se
    return Paired(n, mean, sd, t, df, p, (mean - q * se, mean + q * se), (mean - q_fam * se, mean + q_fam * se), mde)
