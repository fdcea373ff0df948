"""Small-sample statistics for the reproduction study, in plain Python (no SciPy dependency).

* :func:`t_quantile` / :func:`t_sf2`: Student's t distribution through the regularized incomplete beta
  function :func:`betainc` (a continued fraction), for confidence intervals and two-sided p-values;
* :func:`sign_flip_p`: the exact two-sided sign-flip permutation test of paired differences (all 2^n sign
  patterns), distribution-free, but unable to go below 2 / 2^n (0.5 with 2 seeds, 0.0625 with 5);
* :func:`holm`: Holm's step-down adjustment of a family of p-values (family-wise error rate <= alpha).
"""

from __future__ import annotations

import itertools
import math


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
