"""Resolving model names and paths, with clear errors for everything that is not a llava-style model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from calib.models import load_model, resolve
from runtime.errors import UserError


def test_unknown_name_lists_the_zoo():
    with pytest.raises(UserError, match="unknown model 'llama-9000'.*smol-llava, gemma-llava, llava, tiny-random-llava"):
        resolve("llama-9000")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path}/nope does not exist"):
        resolve(str(tmp_path / "nope"))


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a model directory"):
        resolve(str(tmp_path))


def test_non_llava_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="'bert' checkpoint, not a llava-style one"):
        load_model(str(tmp_path))


def test_corrupt_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid JSON config"):
        resolve(str(tmp_path))


def test_llava_without_hub_gives_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "calib.chat", "--model", "llava", "hi"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "could not load llava-hf/llava-1.5-7b-hf" in proc.stderr and "HF cache" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_smol_llava_with_missing_weights_is_refused(tmp_path):
    from calib.models import smol_llava_dir

    src = smol_llava_dir()
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    with pytest.raises(UserError, match="model.safetensors is missing"):
        load_model(str(tmp_path))
