"""The study statistics on constructed data with known answers: the t interval against its formula, a planted
gain found, a null gain left inconclusive, an opposite effect refuted, and too few seeds deciding nothing."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from hpeft.study.stats import describe, interval, paired, verdict


def test_t_interval_is_mean_plus_minus_t_times_standard_error():
    values = [1.0, 2.0, 4.0, 7.0]
    n, mean, sd = len(values), sum(values) / 4, float(np.std(values, ddof=1))
    half = sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)  # the textbook formula
    lo, hi = interval(values)
    assert lo == pytest.approx(mean - half) and hi == pytest.approx(mean + half)
    d = describe(values)
    assert d["n"] == 4 and d["mean"] == pytest.approx(3.5) and d["sd"] == pytest.approx(sd)


def test_constant_values_have_a_point_interval_and_one_value_none():
    assert interval([5.0, 5.0, 5.0]) == [5.0, 5.0]
    assert interval([5.0]) is None and describe([5.0])["sd"] is None
    assert describe([])["mean"] is None


def test_planted_gain_is_found_and_null_gain_is_inconclusive():
    rng = np.random.default_rng(0)
    base = rng.normal(-20.0, 1.0, size=6)              # seed-to-seed spread shared by both arms (pairing)
    noise = rng.normal(0.0, 0.05, size=6)
    better = base - 0.5 + noise                        # a planted 0.5 dB improvement
    same = base + noise - noise.mean()                 # no effect at all: mean difference exactly 0
    planted = paired(better, base)
    assert planted["estimate"] == pytest.approx(-0.5 + noise.mean())
    assert verdict(planted["ci95"], "<") == "supported"
    null = paired(same, base)
    assert abs(null["estimate"]) < 1e-12 and null["ci95"][0] < 0 < null["ci95"][1]
    assert verdict(null["ci95"], "<") == "inconclusive"
    assert verdict(paired(base + 0.5 + noise, base)["ci95"], "<") == "refuted"  # the opposite effect


def test_pairing_removes_the_shared_spread():
    """Unpaired, a 0.1 dB effect under 1 dB seed-to-seed spread is invisible; paired it is clear."""
    rng = np.random.default_rng(1)
    base = rng.normal(-20.0, 1.0, size=5)
    better = base - 0.1 + rng.normal(0.0, 0.01, size=5)
    lo, hi = interval(better)
    assert lo < base.mean() < hi  # the arms' own intervals overlap
    assert verdict(paired(better, base)["ci95"], "<") == "supported"
    assert paired(better, base)["p"] == pytest.approx(sps.ttest_rel(better, base).pvalue)


def test_verdict_rules_and_bad_claims():
    assert verdict([0.1, 0.3], ">") == "supported"
    assert verdict([0.1, 0.3], "<", threshold=0.35) == "supported"
    assert verdict([0.1, 0.3], "<", threshold=0.2) == "inconclusive"
    assert verdict([-0.3, 0.0], "<") == "inconclusive"  # touching the threshold decides nothing
    assert verdict(None, "<") == "inconclusive"
    with pytest.raises(ValueError, match="claim '=='; valid"):
        verdict([0, 1], "==")
    with pytest.raises(ValueError, match="ci method 'normal'; valid"):
        interval([1, 2], method="normal")
    with pytest.raises(ValueError, match="equal lengths"):
        paired([1, 2], [1])


def test_bootstrap_interval_covers_the_mean_and_is_seeded():
    values = list(np.random.default_rng(2).normal(3.0, 1.0, size=20))
    lo, hi = interval(values, method="bootstrap")
    assert lo < float(np.mean(values)) < hi
    assert interval(values, method="bootstrap") == [lo, hi]  # same seed, same interval
    t_lo, t_hi = interval(values)
    assert abs((hi - lo) - (t_hi - t_lo)) < 0.5 * (t_hi - t_lo)  # two methods, one answer to within half a width
