"""The expert map read without torch from a real calib.experts artifact, and its refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.report.experts import read_experts

from .conftest import LAYERS, MODULES, WIDTH


def test_counts_match_the_artifact(experts_dir):
    from calib.experts import load_experts

    m = read_experts(experts_dir)
    ref = load_experts(experts_dir)
    assert m.layers == tuple(range(LAYERS)) and m.modules == MODULES
    assert m.units.shape == (LAYERS, len(MODULES)) and (m.units == WIDTH).all()
    for layer, mods in ref.counts()["per_layer"].items():
        for module, count in mods.items():
            assert m.suppressed[int(layer), MODULES.index(module)] == count
    assert m.auroc.size == LAYERS * len(MODULES) * WIDTH
    assert int((m.alpha < 1).sum()) == ref.counts()["totals"]["suppressed"] > 0
    assert np.all(m.auroc[m.alpha < 1] > 0.6)  # threshold 0.6
    assert m.method["method"] == "sgm" and m.model["name"] == "tiny-test"


def test_refusals(experts_dir, tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        read_experts(tmp_path / "none")
    (experts_dir / "experts.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="sha256"):
        read_experts(experts_dir)


def test_wrong_kind(tmp_path):
    from runtime.artifacts import write_manifest

    (tmp_path / "x").mkdir()
    write_manifest(tmp_path / "x", "sgm-bundle", format_version=1)
    with pytest.raises(UserError, match="not 'sgm-experts'"):
        read_experts(tmp_path / "x")
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["kind"] == "sgm-bundle"
