"""Degenerate calibration statistics: too few toxic or non-toxic samples are refused (or flagged on request)
before the long work where the limits show it, and ties at the cap are settled by score, never by position."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import calib.experts as experts_mod
from calib import calibset
from calib.factors import factor_spec, factors, factors_by_key
from compile import build as build_mod
from runtime import cli
from runtime.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
TOXIC = ("you are a stupid idiot", "shut up, moron", "what a dumb fool")
CLEAN = ("the cat sat on the mat", "a red circle and two squares", "paris is in france")


def _rtp(path: Path, n_toxic: int, n_clean: int) -> Path:
    rows = [{"prompt": {"text": f"{TOXIC[i % 3]} {i}", "toxicity": 0.9}} for i in range(n_toxic)]
    rows += [{"prompt": {"text": f"{CLEAN[i % 3]} {i}", "toxicity": 0.02}} for i in range(n_clean)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_one_toxic_of_sixteen_is_refused_with_reason_and_fix() -> None:
    from calib.scoring import MIN_PER_CLASS, check_class_counts

    with pytest.raises(UserError) as e:
        check_class_counts(1, 15, "raise --limit")
    msg = str(e.value)
    assert "1 toxic and 15 non-toxic" in msg and f"at least {MIN_PER_CLASS} toxic" in msg
    assert "1/(n_pos n_neg)" in msg and "raise --limit" in msg
    check_class_counts(MIN_PER_CLASS, MIN_PER_CLASS, "")


@pytest.mark.parametrize("short", ["toxic", "non-toxic", "no toxic"])
def test_either_class_below_the_minimum_is_refused(short: str) -> None:
    from calib.scoring import MIN_PER_CLASS, check_class_counts

    n_pos, n_neg = {"toxic": (MIN_PER_CLASS - 1, 500), "non-toxic": (500, MIN_PER_CLASS - 1), "no toxic": (0, 40)}[short]
    with pytest.raises(UserError, match="too few to rank units"):
        check_class_counts(n_pos, n_neg, "")


def test_planted_tie_across_the_cap_is_not_broken_by_position() -> None:
    # the case in small: many units tie at AUROC 1.0, the cap is smaller than the tie
    rng = np.random.default_rng(0)
    auroc = rng.uniform(0.3, 0.8, 1000)
    auroc[rng.choice(1000, 50, replace=False)] = 1.0
    alpha = factors(auroc, factor_spec("sgm", top_k=10))
    assert (alpha[auroc == 1.0] == 1.0).all()  # none of the tied units is picked over the others
    assert (alpha < 1).sum() == 0  # nothing is strictly above the tie: nothing fits in the cap
    order = rng.permutation(1000)
    np.testing.assert_array_equal(factors(auroc[order], factor_spec("sgm", top_k=10)), alpha[order])


@pytest.mark.parametrize("method, extra", [("sgm", {}), ("det0", {}), ("damp", {"damp_alpha": 0.5})])
def test_selection_is_the_same_for_any_unit_order(method: str, extra: dict) -> None:
    auroc = np.array([0.95, 0.9, 0.8, 0.8, 0.8, 0.7, 0.6, 0.55])
    spec = factor_spec(method, top_k=3, **extra)
    got = factors(auroc, spec)
    assert (got[:2] < 1).all() and (got[2:] == 1).all()  # the three tied at 0.8 cross the cap: left out together
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(auroc.size)
        np.testing.assert_array_equal(factors(auroc[order], spec), got[order])


def test_a_tie_that_fits_in_the_cap_is_taken_whole() -> None:
    auroc = np.array([0.9, 0.8, 0.8, 0.7, 0.6])
    np.testing.assert_array_equal(factors(auroc, factor_spec("det0", top_k=3)), [0, 0, 0, 1, 1])


def test_tie_across_modules_does_not_favour_layer_zero() -> None:
    auroc = {"layers.0.mlp.gate_proj": np.full(6, 0.8), "layers.1.mlp.gate_proj": np.array([0.99, 0.8, 0.8, 0.6])}
    got = factors_by_key(auroc, factor_spec("det0", top_k=4))
    assert (got["layers.0.mlp.gate_proj"] == 1).all()
    np.testing.assert_array_equal(got["layers.1.mlp.gate_proj"], [0, 1, 1, 1])


def test_experts_cli_refuses_a_small_text_set_and_flags_it_on_request(tmp_path: Path, capsys) -> None:
    rtp = _rtp(tmp_path / "rtp.jsonl", 3, 30)
    args = ["--model", "tiny-random-llava", "--calib", f"rtp:{rtp}", "--work-dir", str(tmp_path / "work")]
    assert experts_mod.main([*args, "--out", str(tmp_path / "ex")]) == 2
    err = capsys.readouterr().err
    assert "3 toxic and 30 non-toxic" in err and "--allow-small-calibration" in err and "--samples-per-item" in err
    assert not (tmp_path / "ex").exists()
    assert experts_mod.main([*args, "--out", str(tmp_path / "ex"), "--allow-small-calibration"]) == 0
    assert "WARNING" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "ex" / "manifest.json").read_text())
    assert manifest["calibration"]["below_minimum"] is True and manifest["scoring"]["below_minimum"] is True
    # reusing those AUROCs is refused the same way
    assert experts_mod.main(["--model", "tiny-random-llava", "--out", str(tmp_path / "re"),
                             "--auroc-from", str(tmp_path / "ex")]) == 2
    assert "too few to rank units" in capsys.readouterr().err and not (tmp_path / "re").exists()


def _dataset(root: Path, per_condition: int) -> Path:
    """A hand-made calibration split (no manifest): `per_condition` items of each default condition."""
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(root / "images" / "a.png")
    rows = [{"id": f"{c}{i}", "split": "calibration", "condition": c, "category": "insult", "prompt": f"say {c} {i}",
             "image": "images/a.png", "source": f"src-{c}{i}"}
            for c in experts_mod.DEFAULT_CONDITIONS for i in range(per_condition)]
    (root / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_experts_cli_limit_1_is_refused_before_any_response_is_generated(tmp_path: Path, monkeypatch, capsys) -> None:
    root = _dataset(tmp_path / "d", 5)

    def generate(*a, **k):
        raise AssertionError("responses were generated for a set that cannot reach the minimum")

    monkeypatch.setattr(calibset, "model_responses", generate)
    assert experts_mod.main(["--model", "tiny-random-llava", "--out", str(tmp_path / "ex"), "--dataset", str(root),
                             "--limit", "1", "--judge", "keyword-does-not-load"]) == 2
    err = capsys.readouterr().err
    n = len(experts_mod.DEFAULT_CONDITIONS)
    assert f"{n} items x 2 samples per item gives at most {2 * n} calibration samples" in err and "--limit" in err


@pytest.mark.parametrize("dry", [True, False])
def test_build_limit_1_is_refused_before_any_stage(tmp_path: Path, monkeypatch, capsys, dry: bool) -> None:
    """With five calibration conditions a limit of 2 can reach the minimum (20 samples); 1 cannot."""
    monkeypatch.setattr(build_mod, "run_build", lambda args: pytest.fail("a stage ran"))
    argv = ["--model", "tiny-random-llava", "--out", str(tmp_path / "b"), "--limit", "1"] + (["--dry-run"] if dry else [])
    assert cli.run(build_mod.main, argv) == 2
    err = capsys.readouterr().err
    assert "a calibration limit of 1" in err and "--allow-small-calibration" in err and "--experts" in err
    assert not (tmp_path / "b").exists()


def test_build_smoke_run_warns_and_passes_the_flag_on(tmp_path: Path, monkeypatch, capsys) -> None:
    seen = {}
    monkeypatch.setattr(build_mod, "run_build", lambda args: seen.setdefault("args", args))
    argv = ["--model", "tiny-random-llava", "--out", str(tmp_path / "b"), "--limit", "1", "--allow-small-calibration"]
    assert cli.run(build_mod.main, argv) == 0
    assert "WARNING" in capsys.readouterr().err and seen["args"].allow_small_calibration


def test_default_build_limit_passes_the_early_check(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(build_mod, "run_build", lambda args: None)
    assert cli.run(build_mod.main, ["--model", "tiny-random-llava", "--out", str(tmp_path / "b")]) == 0


def test_minimum_and_reason_are_in_help_and_docs() -> None:
    from calib.scoring import MIN_PER_CLASS

    p = subprocess.run([sys.executable, "-m", "calib.experts", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    text = " ".join(p.stdout.split())
    assert p.returncode == 0 and f"at least {MIN_PER_CLASS} toxic and {MIN_PER_CLASS} non-toxic" in text
    assert "1/(n_pos n_neg)" in text and "--allow-small-calibration" in text
    docs = " ".join((ROOT / "docs" / "factors.md").read_text().split())
    assert re.search(rf"at least \*\*{MIN_PER_CLASS} toxic and {MIN_PER_CLASS} non-toxic", docs)
    assert "1/(n_pos n_neg)" in docs
