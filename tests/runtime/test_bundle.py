"""Loading a bundle: runtime.json parsed and checked, and every kind of bad bundle refused with a clear error."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.artifacts import MANIFEST, write_manifest
from runtime.backends import open_backend
from runtime.backends.ort import resolve_providers, tensorrt_defaults
from runtime.bundle import FORMAT_VERSION, RUNTIME_FILE, load_bundle
from runtime.errors import UserError
from runtime.generate import BundleGenerator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _edit_runtime(bundle: Path, **changes) -> None:
    """Change runtime.json and re-seal the manifest, so only the change itself is wrong."""
    spec = json.loads((bundle / RUNTIME_FILE).read_text())
    spec.update(changes)
    (bundle / RUNTIME_FILE).write_text(json.dumps(spec))
    manifest = json.loads((bundle / MANIFEST).read_text())
    write_manifest(bundle, manifest.pop("kind"), **{k: v for k, v in manifest.items() if k != "files"})


def test_spec_matches_the_tiny_model(tiny_bundle: Path, tiny_llava):
    spec = load_bundle(tiny_bundle).spec
    text = tiny_llava.hf.config.text_config
    assert spec.format_version == FORMAT_VERSION and spec.dtype == "float32"
    assert (spec.num_layers, spec.num_kv_heads, spec.hidden_size) == (text.num_hidden_layers,
                                                                       text.num_key_value_heads, text.hidden_size)
    assert spec.image_token_id == tiny_llava.image_token_id
    assert spec.num_image_tokens == tiny_llava.num_image_tokens
    assert spec.eos_token_ids == tiny_llava.eos_token_ids and spec.pad_token_id == tiny_llava.pad_token_id
    assert spec.image == tiny_llava.image_spec
    assert spec.prompt.render("Hi?", with_image=True) == tiny_llava.chat_prompt("Hi?", True)
    assert spec.prompt.render("Hi?", with_image=True, chat=False) == "Hi?"
    assert spec.decoder.past_names(2) == ["past_key_values.0.key", "past_key_values.0.value",
                                          "past_key_values.1.key", "past_key_values.1.value"]


def test_tampered_graph_is_refused(bundle: Path):
    path = bundle / "decoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="decoder.onnx does not match its sha256"):
        load_bundle(bundle)


def test_truncated_graph_is_refused_by_the_manifest_and_by_onnxruntime(bundle: Path):
    path = bundle / "vision.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="vision.onnx does not match its sha256"):
        load_bundle(bundle)
    unverified = load_bundle(bundle, verify=False)
    with pytest.raises(UserError, match="cannot load the vision graph"):
        open_backend(unverified, threads=1)


def test_newer_format_version_asks_for_a_runtime_upgrade(bundle: Path):
    _edit_runtime(bundle, format_version=FORMAT_VERSION + 1)
    with pytest.raises(UserError, match=f"format_version {FORMAT_VERSION + 1}.*upgrade the runtime"):
        load_bundle(bundle)


def test_missing_graph_is_refused(bundle: Path):
    (bundle / "embed.onnx").unlink()
    with pytest.raises(UserError, match="embed.onnx is listed in manifest.json but missing"):
        load_bundle(bundle)
    _edit_runtime(bundle)  # re-sealed without the graph
    with pytest.raises(UserError, match="embed graph embed.onnx is not listed in its manifest.json"):
        load_bundle(bundle)


def test_runtime_json_without_a_graph_entry_is_refused(bundle: Path):
    spec = json.loads((bundle / RUNTIME_FILE).read_text())
    del spec["graphs"]["vision"]
    _edit_runtime(bundle, graphs=spec["graphs"])
    with pytest.raises(UserError, match="graphs.vision is missing"):
        load_bundle(bundle)


@pytest.mark.parametrize("field", ["num_layers", "eos_token_ids", "image", "prompt", "decoder"])
def test_missing_field_is_named(bundle: Path, field: str):
    spec = json.loads((bundle / RUNTIME_FILE).read_text())
    del spec[field]
    (bundle / RUNTIME_FILE).write_text(json.dumps(spec))
    _edit_runtime(bundle)
    with pytest.raises(UserError, match=f"'{field}' is missing"):
        load_bundle(bundle)


def test_not_a_bundle(tmp_path: Path, bundle: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no manifest.json"):
        load_bundle(tmp_path / "empty")
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["kind"] = "experts"
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="'experts' artifact, not a bundle"):
        load_bundle(bundle)


def test_graph_names_must_match_runtime_json(bundle: Path):
    spec = json.loads((bundle / RUNTIME_FILE).read_text())
    _edit_runtime(bundle, decoder={**spec["decoder"], "logits": "scores"}, num_layers=3)
    with pytest.raises(UserError, match="decoder graph does not match runtime.json: missing "
                                        "past_key_values.2.key, past_key_values.2.value, scores"):
        open_backend(load_bundle(bundle), threads=1)


def test_image_token_must_match_the_tokenizer(bundle: Path):
    _edit_runtime(bundle, image_token_id=3)
    with pytest.raises(UserError, match="maps '<image>' to 4, but runtime.json says image_token_id 3"):
        BundleGenerator.open(bundle, threads=1)


def test_providers_are_checked():
    cpu_only = ["CPUExecutionProvider"]
    assert resolve_providers(["cpu"], available=cpu_only) == [("CPUExecutionProvider", {})]
    assert resolve_providers(["tensorrt", "cuda"], {"tensorrt": {"trt_fp16_enable": True}},
                             available=["TensorrtExecutionProvider", "CUDAExecutionProvider", *cpu_only]) == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": True}), ("CUDAExecutionProvider", {}),
        ("CPUExecutionProvider", {})]
    with pytest.raises(UserError, match="unknown execution provider 'gpu'; choose from cpu, cuda, tensorrt"):
        resolve_providers(["gpu"], available=cpu_only)
    with pytest.raises(UserError, match="'cuda' .* is not in this onnxruntime build.*onnxruntime-gpu"):
        resolve_providers(["cuda"], available=cpu_only)
    with pytest.raises(UserError, match="no execution provider"):
        resolve_providers([], available=cpu_only)


def test_tensorrt_engines_are_cached_per_bundle(tiny_bundle: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SGM_CACHE", str(tmp_path))
    bundle = load_bundle(tiny_bundle)
    opts = tensorrt_defaults(bundle)
    assert opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(tmp_path / "tensorrt-ep" / bundle.fingerprint[:16])


def test_backend_options_are_checked(tiny_bundle: Path):
    bundle = load_bundle(tiny_bundle)
    with pytest.raises(UserError, match="unknown backend 'tvm'"):
        open_backend(bundle, "tvm")
    with pytest.raises(UserError, match="bad options for the onnxruntime backend"):
        open_backend(bundle, thread=2)
    with pytest.raises(UserError, match="threads must be >= 1"):
        open_backend(bundle, threads=0)
    with pytest.raises(UserError, match="graph optimization 'max' is not one of"):
        open_backend(bundle, optimization="max")


def test_chat_cli_reports_a_bad_bundle(bundle: Path):
    (bundle / "tokenizer.json").write_text("{}")
    p = subprocess.run([sys.executable, "-m", "runtime.chat", "--bundle", str(bundle), "Hello?"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env={**os.environ})
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and "tokenizer.json does not match its sha256" in p.stderr
