"""The CLI: build, run (model and judge loaders replaced by fakes), and exit code 2 with a message on errors."""
from __future__ import annotations

import json

import pytest

from runtime.mmtoxicqa import __main__ as cli
from runtime.mmtoxicqa import evaluate
from runtime.mmtoxicqa.dataset import load_dataset

from .conftest import SMALL, CannedGenerator, KeywordJudge


def test_build_command(tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli.main(["build", "--out", str(out), "--eval-size", "3", "--calib-size", "4", "--seed", "2"]) == 0
    assert len(load_dataset(out, split="evaluation")) == 18 and len(load_dataset(out, split="calibration")) == 24
    assert cli.main(["build", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_run_command_with_fakes(small_dataset, tmp_path, monkeypatch, capsys):
    loaded = {}

    def fake_model(name):
        loaded["model"] = name
        return CannedGenerator({}, default="a calm answer", name=name)

    def fake_judge(name):
        loaded["judge"] = name
        return KeywordJudge()

    monkeypatch.setattr(evaluate, "load_model", fake_model)
    monkeypatch.setattr(evaluate, "load_judge", fake_judge)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("word " * 30 + "\n") * 3)
    out = tmp_path / "run"
    argv = ["run", "--model", "smol-llava", "--out", str(out), "--dataset", str(small_dataset), "--limit", "2",
            "--conditions", "standard,visual", "benign", "--greedy", "--max-new-tokens", "8", "--seed", "3",
            "--ppl-corpus", str(corpus), "--no-progress"]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert loaded == {"model": "smol-llava", "judge": None}
    assert report["n_items_by_condition"] == {"benign": 2, "standard": 2, "visual": 2}
    assert report["settings"]["do_sample"] is False and report["settings"]["max_new_tokens"] == 8
    assert report["settings"]["generation"]["visual"]["max_new_tokens"] == 8  # never above --max-new-tokens
    assert report["dataset"]["split"] == "evaluation" and report["dataset"]["limit"] == 2
    assert report["perplexity"] == pytest.approx(2.718281828 ** 2) and report["perplexity_corpus"]["n_texts"] == 3
    assert "harmful rate 0.0 (0/2)" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--conditions", "bogus"], "unknown condition(s) 'bogus'"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--samples", "2", "--greedy"], "identical responses"),
    (["--ppl-corpus", "/nonexistent/wiki.txt"], "perplexity corpus /nonexistent/wiki.txt does not exist"),
])
def test_run_errors_exit_2(small_dataset, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setattr(evaluate, "load_model", lambda name: pytest.fail("the model must not load on bad input"))
    assert cli.main(["run", "--model", "m", "--out", str(tmp_path / "r"), "--dataset", str(small_dataset),
                     "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err


def test_limit_items_keeps_order_per_condition(small_dataset):
    items = load_dataset(small_dataset, split="evaluation")
    got = evaluate.limit_items(items, 1)
    assert [it.condition for it in got] == ["standard", "jailbreak", "typographic", "continuation", "benign",
                                                  "visual"]
    assert all(it is next(j for j in items if j.condition == it.condition) for it in got)
    assert len(evaluate.limit_items(items, None)) == 6 * SMALL.eval_size


def test_runtime_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, runtime.scenes, runtime.mmtoxicqa, runtime.mmtoxicqa.__main__; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'calib', 'compile', "
            "'skimage')]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
