"""llama_jreg.analysis.stats: Student's t (via the regularized incomplete beta function), the exact sign-flip
test and Holm's correction, checked against table values and closed forms."""

from __future__ import annotations

import math
import random

import pytest

from llama_jreg.analysis.stats import (
    betainc,
    holm,
    paired,
    sign_flip,
    sign_flip_p,
    t_cdf,
    t_quantile,
    t_sf2,
    wilson,
)


@pytest.mark.parametrize("df, q", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042), (120, 1.980)])
def test_t_quantile_matches_the_table(df, q):
    assert round(t_quantile(0.975, df), 3) == q
    assert t_quantile(0.025, df) == pytest.approx(-t_quantile(0.975, df))
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-12)


def test_t_closed_forms():
    # df = 1 is the Cauchy distribution, df = 2 has P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (0.0, 0.3, 1.0, 4.0, 40.0):
        assert t_sf2(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-13)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
        assert t_cdf(-t, 2) == pytest.approx(1 - t_cdf(t, 2), abs=1e-13)
    assert t_quantile(0.995, 1) == pytest.approx(math.tan(math.pi * 0.495))
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-6)  # -> the normal quantile
    assert t_sf2(math.inf, 3) == 0.0


def test_betainc_identities():
    rng = random.Random(0)
    for _ in range(200):
        x, a, b = rng.random(), rng.uniform(0.1, 30), rng.uniform(0.1, 30)
        assert betainc(1, 1, x) == pytest.approx(x, abs=1e-13)
        assert betainc(a, 1, x) == pytest.approx(x ** a, abs=1e-12)
        assert betainc(a, b, x) == pytest.approx(1 - betainc(b, a, 1 - x), abs=1e-12)
    assert betainc(7.5, 7.5, 0.5) == pytest.approx(0.5, abs=1e-13)
    assert (betainc(2, 3, 0.0), betainc(2, 3, 1.0)) == (0.0, 1.0)


def test_against_scipy_where_installed():
    st = pytest.importorskip("scipy.stats")
    for df in (1, 1.5, 3, 7.3, 30, 200):
        for p in (0.6, 0.9, 0.975, 0.9995):
            assert t_quantile(p, df) == pytest.approx(st.t.ppf(p, df), rel=1e-9)
        for t in (0.1, 2.0, 12.7):
            assert t_sf2(t, df) == pytest.approx(2 * st.t.sf(t, df), rel=1e-9, abs=1e-15)


def test_sign_flip_and_holm():
    assert sign_flip_p([0.3, 0.1]) == 0.5                    # 2 seeds: never below 2/4
    assert sign_flip_p([1, 2, 3, 4, 5, 6]) == 2 / 64          # all of one sign: the two extreme patterns
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert sign_flip_p([3.0, 1.0, -1.0]) == 6 / 8             # |sum| >= 3: 3 of the 4 patterns of 3 and mirrors
    assert sign_flip_p([1.0] * 17) is None                    # beyond max_n: not enumerated
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9]) and holm([]) == []
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_paired_against_scipy_and_its_power():
    st = pytest.importorskip("scipy.stats")
    d = [0.31, -0.05, 0.22, 0.18, 0.40, 0.02, 0.27, 0.11, 0.35, -0.02]
    r = paired(d, m=6)
    ref = st.ttest_1samp(d, 0.0)
    assert r.n == 10 and r.df == 9 and r.t == pytest.approx(ref.statistic, rel=1e-12)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-9)
    se = st.sem(d)
    assert r.ci == pytest.approx(st.t.interval(0.95, 9, loc=r.mean, scale=se), rel=1e-9)
    assert r.ci_family == pytest.approx(st.t.interval(1 - 0.05 / 6, 9, loc=r.mean, scale=se), rel=1e-9)
    assert r.ci_family[0] < r.ci[0] and r.ci_family[1] > r.ci[1]  # the family interval is wider
    # at a true mean difference of `mde` the two-sided test at alpha / m has about 80 % power (noncentral t)
    crit = st.t.ppf(1 - 0.05 / 12, 9)
    nc = r.mde / r.sd * math.sqrt(10)
    power = st.nct.sf(crit, 9, nc) + st.nct.cdf(-crit, 9, nc)
    assert 0.78 <= power <= 0.85
    assert paired([0.25, 0.25, 0.25]).p == 0.0 and paired([0.0, 0.0]).p == 1.0


def test_monte_carlo_sign_flip_matches_the_exact_test():
    d = [0.9, -0.2, 0.5, 0.7, -0.4, 0.3, 0.8, 0.1, 0.6, -0.1, 0.2, 0.4]
    exact, how = sign_flip(d)
    assert how == "exact" and exact == sign_flip_p(d)
    mc, how = sign_flip(d, max_exact=4, draws=50_000, seed=0)
    assert how.startswith("monte carlo") and mc == pytest.approx(exact, abs=0.006)
    assert sign_flip(d, max_exact=4, draws=2000, seed=3) == sign_flip(d, max_exact=4, draws=2000, seed=3)
    p40, _ = sign_flip([1.0] * 40)  # 40 of one sign: no random pattern reaches it, p = 1 / (1 + draws)
    assert p40 == pytest.approx(1 / 100_001)


def test_wilson_interval():
    lo, hi = wilson(3, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.108, 0.603)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
