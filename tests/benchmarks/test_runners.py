"""benchmarks/runners.py and peers.py helpers. The peers' runners need onnxruntime-genai or llama-cpp-python,
which live in .venv-peers, not in the project's venv: their tests skip, with the reason, when absent."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runners = _load("runners")
peers = _load("peers")


def test_record_has_the_reported_fields():
    r = runners.record([1, 2, 3], 0.1, 0.12, 0.5, 2)
    assert r == {"tokens": [1, 2, 3], "prefill_ms": 100.0, "ttft_ms": 120.0, "steps": 2, "decode_tok_s": 4.0}
    assert "decode_tok_s" not in runners.record([1], 0.1, 0.1, 0.0, 0)


def test_labelled_arguments():
    assert peers.parse_labelled(["int4=/b/x@standard", "fp32=/b/y"], "bundle") == [
        ("int4", "/b/x", "standard"), ("fp32", "/b/y", None)]
    with pytest.raises(SystemExit):
        peers.parse_labelled(["nolabel"], "bundle")


def test_random_factors_hit_the_asked_share_of_units(tiny_llava):
    scales = peers.random_factors(tiny_llava, 0.05, seed=1)
    units = dict((u.key, u.width) for u in tiny_llava.mlp_units())
    total = sum(units.values())
    hit = sum(int((s < 1).sum()) for s in scales.values())
    assert hit == round(0.05 * total) and set(scales) <= set(units)
    assert all(tuple(s.shape) == (units[k],) for k, s in scales.items())


def test_ort_runner_ignores_eos_on_request(tiny_bundle):
    from runtime.generate import BundleGenerator

    gen = BundleGenerator.open(tiny_bundle, threads=1)
    ids = gen.tokenizer.request_ids(__import__("runtime.protocol", fromlist=["x"]).GenerationRequest("Hello"))
    r = runners.ort_runner(gen, ignore_eos=True)(ids, 6)
    assert len(r["tokens"]) == 6 and r["steps"] == 5 and r["ttft_ms"] >= r["prefill_ms"] > 0


def test_genai_runner():
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed (it lives in .venv-peers)")
    model = Path(__file__).resolve().parents[2] / "build" / "peers" / "genai-int4"
    if not (model / "model.onnx").is_file():
        pytest.skip(f"no onnxruntime-genai model at {model} (scripts/bench-peers builds it)")
    run, _ = runners.genai_runner(str(model), 1)
    r = run([1, 2, 3, 4], 4)
    assert len(r["tokens"]) == 4 and r["steps"] == 3


def test_llama_runner():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it lives in .venv-peers)")
    run, _ = runners.llama_runner(peers.default_gguf(), 1)
    r = run([1, 2, 3, 4], 4)
    assert len(r["tokens"]) == 4 and r["steps"] == 3
