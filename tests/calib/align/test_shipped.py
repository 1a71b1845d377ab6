"""The shipped projector: its file matches its manifest, and smol-llava is built with it."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import calib.models as zoo
from calib.models import efficientnet
from calib.align.__main__ import KIND, PROJECTOR_FILE
from calib.align.evaluate import heldout_questions, visual_accuracy
from runtime.artifacts import read_manifest, sha256_file
from runtime.errors import UserError

ASSETS = zoo.SHIPPED_PROJECTOR.parent
TARGETS = {"colour": 0.85, "shape": 0.75, "count": 0.60}  # issue 7's held-out accuracy targets


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((ASSETS / "manifest.json").read_text())


def test_file_matches_its_manifest_hash(manifest):
    assert zoo.SHIPPED_PROJECTOR.name == PROJECTOR_FILE and manifest["kind"] == KIND
    assert manifest["files"][PROJECTOR_FILE] == sha256_file(zoo.SHIPPED_PROJECTOR)
    read_manifest(ASSETS, verify=True)
    assert zoo.shipped_projector() == zoo.SHIPPED_PROJECTOR


def test_file_is_small_fp16_with_the_projector_keys(manifest):
    state = load_file(str(zoo.SHIPPED_PROJECTOR))
    assert sorted(state) == ["0.bias", "0.weight", "2.bias", "2.weight"] == manifest["keys"]
    assert all(v.dtype == torch.float16 for v in state.values())
    assert state["0.weight"].shape == (576, efficientnet.FEATURE_DIM) and state["2.weight"].shape == (576, 576)
    assert zoo.SHIPPED_PROJECTOR.stat().st_size < 3_000_000


def test_manifest_records_settings_seed_and_a_clear_gain_over_the_seeded_random_projector(manifest):
    """Issue 7's targets (TARGETS) are not met yet by the shipped projector; this guards the gain it has."""
    assert manifest["data"]["seed"] == manifest["training"]["seed"]
    assert manifest["training"]["steps"] == len(manifest["losses"]) > 0
    acc = manifest["metrics"]["accuracy"]
    for kind in TARGETS:
        trained, random = acc["trained"]["test"][kind]["accuracy"], acc["seeded_random"]["test"][kind]["accuracy"]
        assert trained >= random + 0.25, (kind, trained, random)


def test_a_tampered_projector_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "assets"
    shutil.copytree(ASSETS, copy)
    data = bytearray((copy / PROJECTOR_FILE).read_bytes())
    data[-1] ^= 0xFF
    (copy / PROJECTOR_FILE).write_bytes(bytes(data))
    monkeypatch.setitem(zoo.SHIPPED_PROJECTORS, "smol-llava", copy / PROJECTOR_FILE)
    with pytest.raises(UserError, match="does not match its sha256"):
        zoo.shipped_projector()


def test_smol_llava_is_built_with_the_shipped_projector(smol_llava):
    config = json.loads((zoo.smol_llava_dir() / "config.json").read_text())
    assert config["projector_config"]["state"] == "trained" == smol_llava.config["projector_config"]["state"]
    assert config["projector_config"]["sha256"] == sha256_file(zoo.SHIPPED_PROJECTOR)
    shipped = load_file(str(zoo.SHIPPED_PROJECTOR))
    for key, value in smol_llava.module.projector.state_dict().items():
        assert torch.equal(value, shipped[key].float()), key


@pytest.mark.slow
def test_held_out_accuracy_reproduces_the_manifest(smol_llava, manifest):
    """Greedy answers on the manifest's held-out questions (about 2 minutes on 2 cores)."""
    recorded = manifest["metrics"]["accuracy"]["trained"]["test"]
    got = visual_accuracy(smol_llava, heldout_questions(manifest["data"]["eval_scenes"], manifest["data"]["seed"]),
                          progress=False)["by_kind"]
    for kind in TARGETS:
        assert abs(got[kind]["correct"] - recorded[kind]["correct"]) <= 2, (kind, got[kind], recorded[kind])
