"""compile.build chains the stages on tiny-random-llava, records them, reuses unchanged ones, refuses foreign output."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calib.experts import build_experts, model_info, model_units, save_experts
from calib.factors import factor_spec
from compile.build import BUILD_FILE, main
from runtime.artifacts import read_manifest
from runtime.errors import UserError


@pytest.fixture(scope="module")
def experts(tiny_llava, tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    units = model_units(tiny_llava)
    ex = build_experts(units, {k: rng.random(w) for k, w in units}, factor_spec("sgm"), model_info(tiny_llava),
                       {"sha256": "1" * 64, "n_samples": 0, "note": "hand-made factors for tests"})
    return save_experts(ex, tmp_path_factory.mktemp("ex") / "experts")


@pytest.fixture(scope="module")
def built(experts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "out"
    assert main(["--model", "tiny-random-llava", "--experts", str(experts), "--out", str(out), "--limit", "1",
                 "--seed", "0"]) == 0
    return out


def test_every_stage_writes_a_verified_artifact(built, experts):
    record = json.loads((built / BUILD_FILE).read_text())
    assert set(record["stages"]) == {"fold", "export", "evaluate", "reference"}
    for d in ("detoxified", "bundle", "report", "reference"):
        read_manifest(built / d)
    bundle = read_manifest(built / "bundle")
    assert bundle["kind"] == "sgm-bundle"
    detox = read_manifest(built / "detoxified")
    assert detox["experts"]["path"] == str(experts.resolve())
    report = json.loads((built / "report" / "report.json").read_text())
    assert report["n_items"] == 6 and report["model"]["backend"] != "torch"
    reference = json.loads((built / "reference" / "report.json").read_text())
    assert reference["model"]["backend"] == "torch" and reference["dataset"] == report["dataset"]
    page = (built / "report.html").read_text()
    assert "undetoxified" in page and "detoxified" in page


def test_rerun_reuses_unchanged_stages(built, experts, capsys):
    before = {d: (built / d / "manifest.json").stat().st_mtime_ns for d in ("detoxified", "bundle", "report")}
    assert main(["--model", "tiny-random-llava", "--experts", str(experts), "--out", str(built), "--limit", "1",
                 "--seed", "0"]) == 0
    printed = capsys.readouterr()
    assert "reusing" in printed.err
    assert "before -> after" in printed.out and printed.out.count("gate: ") == 2 and "harmful rate" in printed.out
    after = {d: (built / d / "manifest.json").stat().st_mtime_ns for d in before}
    assert before == after


def test_foreign_output_directory_is_refused(tmp_path, experts):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not written by compile.build"):
        main(["--model", "tiny-random-llava", "--experts", str(experts), "--out", str(tmp_path), "--skip-eval"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_experts_of_another_model_are_refused(experts, tmp_path):
    with pytest.raises(UserError):
        main(["--model", "smol-llava", "--experts", str(experts), "--out", str(tmp_path / "o"), "--skip-eval"])
    assert not (tmp_path / "o" / "detoxified").exists()
