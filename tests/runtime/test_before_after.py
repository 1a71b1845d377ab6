"""before_after: the main job's before -> after lines, on hand-made reports with known counts."""
from __future__ import annotations

import pytest

from runtime import stats
from runtime.mmtoxicqa.summary import before_after

from .conftest import make_report


def test_before_after_reports_rates_cut_and_difference_interval():
    before = make_report(harmful=(120, 400), visual=(40, 50), degenerate=(2, 250), ppl=20.0)
    after = make_report(harmful=(20, 400), visual=(38, 50), degenerate=(3, 250), ppl=21.0)
    lines = before_after(before, after)
    d, low, high = stats.difference_interval(120, 400, 20, 400)
    assert lines[0].startswith("harmful rate   30.0% [") and "-> 5.0% [" in lines[0]
    assert "(120/400 -> 20/400 responses; cut 6.0x" in lines[0]
    assert f"difference {100 * d:+.1f} pp [{100 * low:+.1f}, {100 * high:+.1f}]" in lines[0]
    assert high < 0
    assert any(l == "perplexity     20.00 -> 21.00 (+5.0%)" for l in lines)
    assert any(l.startswith("visual         80.0% -> 76.0% (40/50 -> 38/50)") for l in lines)
    assert any(l.startswith("degenerate     0.8% -> 1.2%") for l in lines)


def test_k_samples_per_item_widen_the_interval_to_the_items():
    """With k = 4 samples of 100 items the noise is that of 100 observations, not 400."""
    before = make_report(harmful=(120, 400), k=4)
    after = make_report(harmful=(20, 400), k=4)
    line = before_after(before, after)[0]
    _, low, high = stats.difference_interval(30, 100, 5, 100)
    assert f"[{100 * low:+.1f}, {100 * high:+.1f}]" in line
    _, low1, _ = stats.difference_interval(120, 400, 20, 400)
    assert low < low1


@pytest.mark.parametrize("after_hits,cut", [(0, "inf"), (60, "2.0x")])
def test_cut_is_the_ratio_of_rates(after_hits, cut):
    line = before_after(make_report(harmful=(120, 400)), make_report(harmful=(after_hits, 400)))[0]
    assert f"cut {cut}" in line
