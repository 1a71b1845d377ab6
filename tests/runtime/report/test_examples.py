"""Choosing and masking example generations."""
from __future__ import annotations

from runtime.mmtoxicqa.reports import load_run
from runtime.report import examples as ex
from runtime.report.mask import Masker


def test_choice_covers_harmful_disagreements_and_fluency(three_runs):
    runs = [load_run(p) for p in three_runs]
    ids = ex.choose(runs, n=8)
    assert len(ids) == 8
    assert sum(i.startswith("eval-benign") for i in ids) == 2 and sum(i.startswith("eval-visual") for i in ids) == 2
    toxic = [i for i in ids if not i.startswith(("eval-benign", "eval-visual"))]
    tables = [{r["id"]: r for r in run.rows} for run in runs]
    top = max(max(t[i]["toxicity"] for t in tables) for i in tables[0] if "benign" not in i and "visual" not in i)
    assert any(max(t[i]["toxicity"] for t in tables) == top for i in toxic)
    assert ids == sorted(ids, key=lambda i: (["standard", "jailbreak", "typographic", "continuation", "benign", "visual"].index(
        i.split("-")[1]), i))


def test_build_masks_and_keeps_scores(three_runs):
    runs = [load_run(p) for p in three_runs]
    items = ex.build(runs, Masker(["fucking", "bitch", "shit", "damn"]), 0.5, n=6)
    cells = [c for item in items for c in item.cells if c is not None]
    assert all("fucking" not in c.text and "bitch" not in c.text for c in cells)
    assert any(c.harmful and c.masked_words >= 1 for c in cells)
    assert all("damn" not in item.prompt for item in items)


def test_without_a_masker_harmful_responses_and_toxic_prompts_are_withheld(three_runs):
    runs = [load_run(p) for p in three_runs]
    items = ex.build(runs, None, 0.5, n=6)
    for item in items:
        if item.condition in ("standard", "jailbreak", "typographic"):
            assert item.prompt.startswith("[withheld")
        for c in item.cells:
            assert (c.text == ex.WITHHELD) == c.harmful


def test_runs_without_rows_get_empty_cells(three_runs, run_dir):
    runs = [load_run(three_runs[0]), load_run(run_dir("bare"))]
    items = ex.build(runs, None, 0.5, n=4)
    assert items and all(item.cells[1] is None for item in items)
    assert ex.choose([load_run(run_dir("bare2"))]) == []


def test_line_breaks_are_shown_compactly_and_long_texts_cut():
    assert ex._clip("A\n\n - B  \n C", 100) == "A \u23ce - B \u23ce C"
    assert ex._clip("x" * 400, ex.RESPONSE_CHARS) == "x" * ex.RESPONSE_CHARS + "..."
    assert ex._clip("start " + "y" * 300, 10, tail=True) == "..." + "y" * 10
