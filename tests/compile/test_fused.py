"""compile.fused on the tiny model: the fused decoder gives the standard decoder's greedy tokens.

Needs onnxruntime-genai's builder (torch, transformers, onnxruntime-genai) in an interpreter of its own:
.venv-peers (scripts/bench-peers --setup-only) or SGM_BUILDER_PYTHON. CI has only the project's venv, so
there the test is skipped with the reason.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from compile.fused import GQA_HEAD_MULTIPLE, add_fused_decoder, builder_available, default_builder_python
from runtime.bundle import load_bundle
from runtime.errors import UserError
from runtime.generate import BundleGenerator
from runtime.protocol import GenerationConfig, GenerationRequest

BUILDER = os.environ.get("SGM_BUILDER_PYTHON") or default_builder_python()


def test_refuses_a_bundle_it_cannot_build_for(tiny_bundle: Path, tmp_path: Path, monkeypatch):
    with pytest.raises(UserError, match="fp32 or int4"):
        add_fused_decoder(tiny_bundle, "tiny-random-llava", tmp_path / "x", precision="int8")
    # the tiny model's head size (8) is below what GroupQueryAttention takes on CPU
    assert load_bundle(tiny_bundle).spec.head_dim % GQA_HEAD_MULTIPLE
    with pytest.raises(UserError, match="multiple of 16; this model's is 8"):
        add_fused_decoder(tiny_bundle, "tiny-random-llava", tmp_path / "y")
    monkeypatch.setattr("compile.fused.GQA_HEAD_MULTIPLE", 1)
    with pytest.raises(UserError, match="builder is not importable"):
        add_fused_decoder(tiny_bundle, "tiny-random-llava", tmp_path / "z", builder_python="/nonexistent/python")
    assert not any((tmp_path / d).exists() for d in "xyz")


@pytest.fixture(scope="module")
def fused_bundle(tiny_bundle: Path, tmp_path_factory) -> Path:
    why = builder_available(BUILDER)
    if why:
        pytest.skip(f"onnxruntime-genai's builder is not available ({BUILDER}: {why})")
    head = load_bundle(tiny_bundle).spec.head_dim
    if head % GQA_HEAD_MULTIPLE:
        pytest.skip(f"the tiny model's head size {head} is not a multiple of {GQA_HEAD_MULTIPLE}, which "
                    "GroupQueryAttention needs on CPU; smol-llava's fused decoders are checked when built "
                    "(their manifests' `check`, BENCHMARKS.md)")
    out = tmp_path_factory.mktemp("fused") / "bundle"
    add_fused_decoder(tiny_bundle, "tiny-random-llava", out, precision="fp32", builder_python=BUILDER, threads=1)
    return out


def test_fused_bundle_records_its_decoder_and_check(fused_bundle: Path):
    bundle = load_bundle(fused_bundle)
    f = bundle.spec.fused_decoder
    assert f is not None and f.logits_positions == "last" and f.kv_buffer == "shared"
    manifest = json.loads((fused_bundle / "manifest.json").read_text())
    assert "GroupQueryAttention" in manifest["fused_decoder"]["contrib_ops"]
    assert manifest["check"]["identical_greedy"] == manifest["check"]["prompts"]


def test_same_greedy_tokens_as_the_standard_decoder(fused_bundle: Path):
    std = BundleGenerator.open(fused_bundle, threads=1, decoder="standard")
    fused = BundleGenerator.open(fused_bundle, threads=1)
    assert fused.backend.describe()["decoder"] == "fused"
    rng = np.random.default_rng(0)
    from PIL import Image

    image = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    requests = [GenerationRequest("What is in the image?", image), GenerationRequest("Say something long."),
                GenerationRequest("Hi")]  # different lengths: the fused decoder runs them one at a time
    config = GenerationConfig(max_new_tokens=12)
    a = std.generate(requests, config)
    b = fused.generate(requests, config)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    # teacher-forced scoring needs every position's logits: it goes through the standard decoder
    assert fused.nll(["a b c d"]) == pytest.approx(std.nll(["a b c d"]), rel=1e-5)
