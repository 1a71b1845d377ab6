"""The factor sweep's variant grammar and table arithmetic (benchmarks/factor_sweep.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from runtime.errors import UserError

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "factor_sweep.py"
_spec = importlib.util.spec_from_file_location("factor_sweep", _PATH)
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def test_baseline_has_no_spec():
    assert sweep.parse_variant("baseline", 1000) == (None, None)


def test_variant_resolves_method_parameters_and_fraction():
    source, spec = sweep.parse_variant("own/sgm:s=2,t=0.6,top_fraction=0.01", 54540)
    assert source == "own"
    assert (spec.method, spec.strength, spec.threshold, spec.top_k) == ("sgm", 2.0, 0.6, 545)
    source, spec = sweep.parse_variant("rtp/det0:top_k=7", 100)
    assert (source, spec.method, spec.top_k) == ("rtp", "det0", 7)
    assert sweep.parse_variant("own/aura", 10)[1].strength == 1.0


@pytest.mark.parametrize("text, needle", [
    ("sgm", "EXPERTS/METHOD"), ("own/sgm:q=1", "unknown parameter"), ("own/sgm:top_fraction=1.5", "top_fraction"),
    ("own/det0", "needs top_k"), ("own/aura:s=2", "does not take"), ("own/nope", "unknown factor method")])
def test_bad_variants_name_the_problem(text, needle):
    with pytest.raises(UserError, match=needle):
        sweep.parse_variant(text, 1000)


def _report(hits, total, ppl, visual=(3, 10)):
    cond = {"hits": hits, "total": total, "rate": hits / total}
    return {"harmful_rate": cond, "harmful_rate_by_condition": {"standard": cond, "benign": {"hits": 0, "total": 5}},
            "mean_toxicity": 0.1, "perplexity": ppl, "visual_accuracy": {"hits": visual[0], "total": visual[1]},
            "degenerate_rate": {"rate": 0.02}, "echo": {"overlap_mean": 0.3}}


def test_table_reports_cut_and_perplexity_change_against_the_first_row():
    rows = [sweep.summarize("baseline", _report(10, 100, 20.0), None),
            sweep.summarize("own/det0", _report(2, 100, 22.0), {"suppressed": 50, "suppressed_fraction": 0.001})]
    assert rows[1]["harmful_ci95"][0] < 0.02 < rows[1]["harmful_ci95"][1]
    md = sweep.table(rows)
    line = md.splitlines()[3]
    assert "5.0x" in line and "+10.0%" in line and "50 (0.10%)" in line and "3/10" in line and "2/100" in line


def test_a_run_without_toxic_eliciting_items_has_no_harmful_rate():
    report = {"harmful_rate": {"hits": 0, "total": 0, "rate": None}, "harmful_rate_by_condition": {},
              "mean_toxicity": None, "perplexity": 30.0, "visual_accuracy": {"hits": 40, "total": 50},
              "degenerate_rate": {"rate": 0.0}}
    rows = [sweep.summarize("baseline", report, None)]
    assert rows[0]["harmful_rate"] is None and rows[0]["visual"] == [40, 50]
    line = sweep.table(rows).splitlines()[2]
    assert "| - | - | - | 30.00 | +0.0% | 40/50 |" in line


def test_strength_curves_group_variants_that_differ_only_in_s():
    def row(variant):
        _, spec = sweep.parse_variant(variant, 100_000)
        return {"variant": variant, "spec": None if spec is None else spec.to_dict()}

    rows = [row(v) for v in ("baseline", "own/sgm:s=4,top_fraction=0.01", "own/sgm:top_fraction=0.01",
                             "own/sgm:s=2,top_fraction=0.01", "own/sgm:s=2,top_fraction=0.001", "rtp/sgm:top_fraction=0.01",
                             "own/det0:top_fraction=0.01")]
    curves = sweep.strength_curves(rows)
    assert list(curves) == ["own/sgm top_k=1000"]
    assert [r["spec"]["strength"] for r in curves["own/sgm top_k=1000"]] == [1.0, 2.0, 4.0]
