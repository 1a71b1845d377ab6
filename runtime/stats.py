"""Sampling noise of rates, and the rule the regression gate uses to tell a regression from noise.

Rates here are shares of independent trials (responses judged harmful, visual items answered correctly).
Intervals are Wilson score intervals; the interval of a difference of two independent rates is
Newcombe's hybrid score interval (Newcombe 1998, method 10), built from the two Wilson intervals. Both
behave at 0 and at small counts, where the textbook normal interval collapses to a point.

The noise rule (`rate_verdict`), for a rate where higher is worse (harmful, degenerate), with baseline
b = h_b / n_b, now c = h_c / n_c, difference d = c - b, its two-sided interval [L, U] at `confidence`
(default 95%) and an allowed increase `limit` >= 0:

- PASS when d <= limit: the observed increase is within the allowed one;
- NOISE when d > limit but L <= 0: the increase is larger than allowed, but not larger than its sampling
  noise (the interval still holds "no change"), so it is not called a regression;
- FAIL when d > limit and L > 0: larger than allowed and larger than its noise.

For a rate where lower is worse (visual accuracy) the same rule applies to the drop -d, with U < 0 in place
of L > 0.

Which interval: when both runs answered the same items, `paired_rate_verdict` applies the rule to the mean of
the per-item changes (item's rate now - item's rate at baseline) and its normal interval: the spread between
items (some prompts are far more provocative than others) cancels, so a real change of a few points over
40 prompts x 10 samples is resolved, where the unpaired interval (`rate_verdict`, which counts an item's k
samples as one observation and ignores the pairing) cannot tell it from noise. The caller uses it from
`MIN_PAIRED_ITEMS` shared items on, where the normal interval of a mean is close to the t interval; below
that, or without per-item results, the unpaired interval is used, which only errs towards NOISE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

PASS, NOISE, FAIL = "pass", "noise", "FAIL"
DEFAULT_CONFIDENCE = 0.95
MIN_PAIRED_ITEMS = 30
_EPS = 1e-12  # rates are ratios of counts: 0.06 - 0.04 must count as exactly 2 pp


def z_value(confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The two-sided normal quantile for `confidence` (1.96 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check_counts(hits: float, n: float) -> None:
    if n <= 0 or hits < 0 or hits > n or not (math.isfinite(hits) and math.isfinite(n)):
        raise ValueError(f"a rate needs 0 <= hits <= n and n > 0, got hits={hits}, n={n}")


def wilson_interval(hits: float, n: float, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the rate hits/n (hits may be fractional, see `effective_counts`)."""
    _check_counts(hits, n)
    z = z_value(confidence)
    p = hits / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == n else min(1.0, centre + half)
    return low, high


def difference_interval(hits_base: float, n_base: float, hits_now: float, n_now: float,
                        confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float]:
    """(d, L, U): the difference now - baseline of two independent rates and Newcombe's hybrid score interval."""
    p1, p2 = hits_base / n_base if n_base else 0.0, hits_now / n_now if n_now else 0.0
    l1, u1 = wilson_interval(hits_base, n_base, confidence)
    l2, u2 = wilson_interval(hits_now, n_now, confidence)
    d = p2 - p1
    return d, d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def mean_interval(values: Sequence[float],
                  confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float] | None:
    """Normal interval of the mean of independent values, mean +- z s / sqrt(n) with s the sample standard
    deviation (n - 1); None for fewer than 2 values. Close to the t interval from about 30 values on."""
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = z_value(confidence) * s / math.sqrt(n)
    return mean - half, mean + half


def two_proportion_test(hits_base: float, n_base: float, hits_now: float, n_now: float) -> tuple[float, float]:
    """Pooled two-proportion z test of "now is higher than baseline": (z, one-sided p-value)."""
    _check_counts(hits_base, n_base)
    _check_counts(hits_now, n_now)
    pooled = (hits_base + hits_now) / (n_base + n_now)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_base + 1.0 / n_now))
    d = hits_now / n_now - hits_base / n_base
    if se == 0.0:
        return 0.0, 0.5 if d == 0 else (0.0 if d > 0 else 1.0)
    z = d / se
    return z, 1.0 - NormalDist().cdf(z)


def effective_counts(rate: float, n_items: int) -> tuple[float, float]:
    """(hits, n) for the noise of a rate over n_items items with k samples each.

    The k samples of one item are not independent (same prompt, same image), so the rate is given the
    weight of n_items observations, not n_items * k: hits = rate * n_items. For k = 1 these are the exact
    counts; for k > 1 the interval is conservative (as wide as if an item's samples always agreed).
    """
    return rate * n_items, float(n_items)


@dataclass(frozen=True)
class RateComparison:
    """A rate in two runs, the difference now - baseline with its interval, and the gate's verdict."""

    baseline: float
    now: float
    difference: float
    low: float
    high: float
    limit: float
    higher_is_worse: bool
    verdict: str


def rate_verdict(hits_base: float, n_base: float, hits_now: float, n_now: float, limit: float,
                 higher_is_worse: bool = True, confidence: float = DEFAULT_CONFIDENCE) -> RateComparison:
    """Compare two rates under the noise rule of this module's docstring; `limit` is a share (0.02 = 2 pp)."""
    d, low, high = difference_interval(hits_base, n_base, hits_now, n_now, confidence)
    return _compare(hits_base / n_base, hits_now / n_now, d, low, high, limit, higher_is_worse)


def paired_rate_verdict(base: Sequence[float], now: Sequence[float], limit: float, higher_is_worse: bool = True,
                        confidence: float = DEFAULT_CONFIDENCE) -> RateComparison:
    """The noise rule on per-item rates of two runs over the same items (`base[i]` and `now[i]` are item i's
    rate in each run): the mean change and its normal interval (`mean_interval`). Needs >= 2 items."""
    if len(base) != len(now) or len(base) < 2:
        raise ValueError(f"paired rates need the same >= 2 items in both runs, got {len(base)} and {len(now)}")
    diffs = [b_now - b_base for b_base, b_now in zip(base, now)]
    low, high = mean_interval(diffs, confidence)  # type: ignore[misc]  # not None: >= 2 values
    mean_base, mean_now = math.fsum(base) / len(base), math.fsum(now) / len(now)
    return _compare(mean_base, mean_now, math.fsum(diffs) / len(diffs), low, high, limit, higher_is_worse)


def _compare(base: float, now: float, d: float, low: float, high: float, limit: float,
             higher_is_worse: bool) -> RateComparison:
    if limit < 0 or not math.isfinite(limit):
        raise ValueError(f"a limit must be a finite number >= 0, got {limit}")
    worse = d if higher_is_worse else -d
    certain = low > 0.0 if higher_is_worse else high < 0.0
    verdict = PASS if worse <= limit + _EPS else (FAIL if certain else NOISE)
    return RateComparison(base, now, d, low, high, limit, higher_is_worse, verdict)


def ratio_verdict(baseline: float, now: float, limit: float) -> tuple[float, str]:
    """(relative change now / baseline - 1, verdict) for a deterministic metric where higher is worse
    (perplexity on a fixed corpus: no sampling noise); FAIL when the change exceeds `limit` (0.1 = +10%)."""
    if not (baseline > 0 and math.isfinite(baseline) and now > 0 and math.isfinite(now)):
        raise ValueError(f"a ratio needs two positive finite values, got {baseline} and {now}")
    change = now / baseline - 1.0
    return change, (FAIL if change > limit else PASS)
