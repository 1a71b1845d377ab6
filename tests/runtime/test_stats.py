"""Wilson and Newcombe intervals against Newcombe (1998)'s published values, and the gate's noise rule."""
from __future__ import annotations

import pytest

from runtime import stats


@pytest.mark.parametrize("hits, n, low, high", [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_table_1(hits, n, low, high):
    lo, hi = stats.wilson_interval(hits, n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_wilson_edges_are_exact_and_contain_the_rate():
    assert stats.wilson_interval(0, 10)[0] == 0.0 and stats.wilson_interval(10, 10)[1] == 1.0
    lo, hi = stats.wilson_interval(7, 50)
    assert lo < 7 / 50 < hi
    lo99, hi99 = stats.wilson_interval(7, 50, confidence=0.99)
    assert lo99 < lo and hi99 > hi


@pytest.mark.parametrize("a, b, low, high", [  # (hits, n) of the first and second sample; interval of p1 - p2
    ((56, 70), (48, 80), 0.0524, 0.3339), ((9, 10), (3, 10), 0.1705, 0.8090), ((5, 56), (0, 29), -0.0381, 0.1926),
    ((0, 10), (0, 20), -0.1611, 0.2775), ((10, 10), (0, 20), 0.6791, 1.0000),
])
def test_difference_matches_newcombe_method_10(a, b, low, high):
    d, lo, hi = stats.difference_interval(b[0], b[1], a[0], a[1])  # now = a, baseline = b
    assert d == pytest.approx(a[0] / a[1] - b[0] / b[1])
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_z_value_and_bad_confidence():
    assert stats.z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        stats.z_value(1.0)


def test_bad_counts_are_refused():
    for hits, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            stats.wilson_interval(hits, n)
    with pytest.raises(ValueError):
        stats.rate_verdict(1, 10, 2, 10, limit=-0.01)


def test_two_proportion_test():
    z, p = stats.two_proportion_test(10, 200, 70, 200)
    assert z == pytest.approx(7.5) and p < 1e-12  # pooled p = 0.2, se = 0.04, d = 0.3
    z, p = stats.two_proportion_test(5, 50, 5, 50)
    assert z == 0.0 and p == pytest.approx(0.5)
    assert stats.two_proportion_test(0, 10, 0, 10) == (0.0, 0.5)


def test_noise_rule_small_increase_on_n50_is_noise_not_regression():
    c = stats.rate_verdict(2, 50, 3, 50, limit=0.0)  # +2 pp on n = 50 against a zero tolerance
    assert c.difference == pytest.approx(0.02) and c.low < 0 < c.high
    assert c.verdict == stats.NOISE
    assert stats.rate_verdict(2, 50, 3, 50, limit=0.02).verdict == stats.PASS  # exactly at the limit


def test_noise_rule_large_increase_on_n200_fails():
    c = stats.rate_verdict(10, 200, 70, 200, limit=0.02)
    assert c.difference == pytest.approx(0.30)
    assert c.low == pytest.approx(0.2258, abs=1e-4) and c.high == pytest.approx(0.3720, abs=1e-4)
    assert c.verdict == stats.FAIL


def test_noise_rule_needs_both_excess_and_significance():
    # +10 pp with n = 40 each: beyond a 2 pp limit, but the interval holds zero
    assert stats.rate_verdict(4, 40, 8, 40, limit=0.02).verdict == stats.NOISE
    # the same +10 pp with n = 1000 each is real
    assert stats.rate_verdict(100, 1000, 200, 1000, limit=0.02).verdict == stats.FAIL
    # a real but tolerated increase passes
    assert stats.rate_verdict(100, 1000, 200, 1000, limit=0.12).verdict == stats.PASS


def test_noise_rule_for_a_rate_where_lower_is_worse():
    drop = stats.rate_verdict(40, 50, 25, 50, limit=0.05, higher_is_worse=False)
    assert drop.difference == pytest.approx(-0.30) and drop.high < 0 and drop.verdict == stats.FAIL
    assert stats.rate_verdict(40, 50, 36, 50, limit=0.05, higher_is_worse=False).verdict == stats.NOISE
    assert stats.rate_verdict(40, 50, 48, 50, limit=0.0, higher_is_worse=False).verdict == stats.PASS


def test_effective_counts_give_an_item_k_samples_the_weight_of_one():
    assert stats.effective_counts(0.25, 40) == (10.0, 40.0)
    narrow = stats.wilson_interval(20, 160)  # 40 items x 4 samples, taken as independent
    wide = stats.wilson_interval(*stats.effective_counts(20 / 160, 40))
    assert wide[0] < narrow[0] and wide[1] > narrow[1]


def test_ratio_verdict():
    change, verdict = stats.ratio_verdict(50.0, 56.0, 0.10)
    assert change == pytest.approx(0.12) and verdict == stats.FAIL
    assert stats.ratio_verdict(50.0, 54.0, 0.10) == (pytest.approx(0.08), stats.PASS)
    assert stats.ratio_verdict(50.0, 40.0, 0.0)[1] == stats.PASS
    with pytest.raises(ValueError):
        stats.ratio_verdict(0.0, 40.0, 0.1)


def test_mean_interval_by_hand():
    # mean 2.5, sample sd sqrt(5/3), standard error sqrt(5/3) / 2
    lo, hi = stats.mean_interval([1.0, 2.0, 3.0, 4.0])
    half = stats.z_value(0.95) * (5 / 3) ** 0.5 / 2
    assert (lo, hi) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    assert stats.mean_interval([0.3, 0.3, 0.3]) == (pytest.approx(0.3), pytest.approx(0.3))
    assert stats.mean_interval([0.5]) is None and stats.mean_interval([]) is None


def test_paired_verdict_resolves_a_change_the_unpaired_interval_calls_noise():
    # 40 items: a quarter are provocative (rate 0.6), the rest rarely (0.0); "now" adds +0.2 on every
    # provocative item: +5 pp overall, consistent item by item
    base = [0.6] * 10 + [0.0] * 30
    now = [0.8] * 10 + [0.0] * 30
    paired = stats.paired_rate_verdict(base, now, limit=0.02)
    assert paired.difference == pytest.approx(0.05) and paired.low > 0 and paired.verdict == stats.FAIL
    unpaired = stats.rate_verdict(*stats.effective_counts(0.15, 40), *stats.effective_counts(0.20, 40), limit=0.02)
    assert unpaired.low < 0 and unpaired.verdict == stats.NOISE
    # the same overall change spread as noise (items move both ways) stays within noise when paired too
    mixed = [0.8, 0.4] * 5 + [0.0] * 30
    assert stats.paired_rate_verdict(base, mixed, limit=0.02).verdict == stats.PASS  # mean change 0
    noisy = [1.0, 0.4] * 5 + [0.0] * 30  # +5 pp on average, items move by +0.4 and -0.2
    assert stats.paired_rate_verdict(base, noisy, limit=0.02).verdict == stats.NOISE


def test_paired_verdict_refuses_unmatched_items():
    with pytest.raises(ValueError):
        stats.paired_rate_verdict([0.1, 0.2], [0.1], limit=0.02)
    with pytest.raises(ValueError):
        stats.paired_rate_verdict([0.1], [0.1], limit=0.02)
