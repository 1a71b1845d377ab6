"""before_after: the main job's before -> after lines, on hand-made reports with known counts."""
from __future__ import annotations

import json

import pytest

from runtime import stats
from runtime.mmtoxicqa import __main__ as mmtoxicqa_cli
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


def _rows(hits_per_item: dict[str, int], k: int = 10, condition: str = "continuation") -> list[dict]:
    return [{"id": key, "condition": condition, "harmful": j < hits} for key, hits in hits_per_item.items()
            for j in range(k)]


def test_paired_difference_is_the_mean_item_change_with_its_interval():
    from runtime.mmtoxicqa.summary import paired_difference

    before = _rows({"a": 6, "b": 2, "c": 0, "d": 4}) + _rows({"v": 1}, k=1, condition="visual")
    after = _rows({"a": 3, "b": 1, "c": 0, "d": 2, "extra": 9})
    d, low, high, n = paired_difference(before, after)
    diffs = [-0.3, -0.1, 0.0, -0.2]  # only the 4 shared toxic-eliciting items count
    assert n == 4 and d == pytest.approx(sum(diffs) / 4)
    assert (low, high) == pytest.approx(stats.mean_interval(diffs))
    assert high < 0
    assert paired_difference(_rows({"a": 1}), _rows({"a": 0})) is None  # one shared item: no interval


def test_paired_interval_is_tighter_than_unpaired_when_items_differ_widely():
    """Prompts of very different provocativeness, each cut by the same share: pairing removes that spread."""
    from runtime.mmtoxicqa.summary import paired_difference

    before = _rows({f"i{n}": 2 * (n % 5) for n in range(40)})
    after = _rows({f"i{n}": (n % 5) for n in range(40)})
    _, low, high, _ = paired_difference(before, after)
    hb, ha = sum(r["harmful"] for r in before), sum(r["harmful"] for r in after)
    _, ul, uh = stats.difference_interval(hb / 10, 40, ha / 10, 40)
    assert high < 0 and (high - low) < (uh - ul)


def _run_dir(path, hits, dataset="d1"):
    path.mkdir()
    rows = [{"id": f"i{n}", "condition": "continuation", "response": "x", "toxicity": float(j < h),
             "harmful": j < h} for n, h in enumerate(hits) for j in range(4)]
    (path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_compare_prints_before_after_and_the_paired_interval(tmp_path, capsys, monkeypatch):
    import runtime.mmtoxicqa.reports as reports

    before, after = tmp_path / "before", tmp_path / "after"
    _run_dir(before, [4, 2, 3, 1])
    _run_dir(after, [1, 0, 1, 0])
    made = {str(before): make_report(harmful=(10, 16), k=4), str(after): make_report(harmful=(2, 16), k=4)}
    monkeypatch.setattr(reports, "read_report", lambda p: made[str(p)])
    assert mmtoxicqa_cli.main(["compare", str(before), str(after)]) == 0
    out = capsys.readouterr().out
    assert "(10/16 -> 2/16 responses; cut 5.0x" in out
    assert "paired by item: difference -50.0 pp [" in out and "over 4 items" in out
    made[str(after)] = {**make_report(harmful=(2, 16), k=4), "dataset": {"other": True}}
    assert mmtoxicqa_cli.main(["compare", str(before), str(after)]) == 2
    assert "did not answer the same items" in capsys.readouterr().err
