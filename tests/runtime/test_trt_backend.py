"""The TensorRT backend's logic without TensorRT or a GPU: engines built by compile.engine through a fake
`tensorrt` whose execution contexts run the bundle's ONNX graphs in ONNX Runtime on the bytes at the
addresses the backend sets (tests/trt_fakes.py). If the backend stages inputs, sizes outputs, picks profiles
or ping-pongs its KV slots wrongly, the tokens differ from the onnxruntime backend's or the fake raises."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.backends.ort import OrtBackend, OrtOptions
from runtime.backends.trt import TrtBackend, TrtOptions, import_tensorrt
from runtime.bundle import load_bundle
from runtime.errors import UserError
from runtime.generate import BundleGenerator
from runtime.protocol import GenerationConfig, GenerationRequest


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fakes = _load("trt_fakes")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    from compile.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("trt") / "bundle"
    export_bundle("tiny-random-llava", out)
    return out


def _engines(bundle_dir: Path, out: Path, cuda, trt, **limits) -> Path:
    from compile.engine import BuildOptions, EngineLimits, build_engines

    base = dict(max_batch=4, opt_batch=1, max_prompt=128, opt_prompt=64, max_context=256, opt_context=128)
    build_engines(bundle_dir, out, BuildOptions(limits=EngineLimits(**{**base, **limits})), trt=trt, cuda=cuda)
    return out


@pytest.fixture(scope="module")
def built(tiny_export: Path, tmp_path_factory):
    cuda = fakes.FakeCuda()
    trt = fakes.fake_tensorrt(cuda)
    engines = _engines(tiny_export, tmp_path_factory.mktemp("engines") / "e", cuda, trt)
    return engines, cuda, trt


def _backend(tiny_export: Path, built) -> TrtBackend:
    engines, cuda, trt = built
    return TrtBackend(load_bundle(tiny_export), TrtOptions(engines=engines), trt=trt, cuda=cuda)


def _requests() -> list[GenerationRequest]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((40, 50), (30, 30))]
    return [GenerationRequest("What is in the image?", images[0]), GenerationRequest("How many shapes?", images[1]),
            GenerationRequest("The capital of France is", chat=False)]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_tokens_match_onnxruntime(tiny_export: Path, built, batch_size: int):
    bundle = load_bundle(tiny_export)
    trt_gen = BundleGenerator(bundle, _backend(tiny_export, built))
    ort_gen = BundleGenerator(bundle, OrtBackend(bundle, OrtOptions(threads=1)))
    config = GenerationConfig(max_new_tokens=40)
    ours = trt_gen.generate(_requests(), config, batch_size=batch_size)
    reference = ort_gen.generate(_requests(), config, batch_size=batch_size)
    assert [r.token_ids for r in ours] == [r.token_ids for r in reference]
    assert sum(len(r.token_ids) for r in ours) > 60  # the loop really ran many decode steps
    sampled = GenerationConfig(max_new_tokens=24, do_sample=True, temperature=1.0, top_p=0.9, seed=3)
    assert [r.token_ids for r in trt_gen.generate(_requests(), sampled, batch_size=batch_size)] == \
           [r.token_ids for r in ort_gen.generate(_requests(), sampled, batch_size=batch_size)]


def test_nll_and_full_logits_match_onnxruntime(tiny_export: Path, built):
    bundle = load_bundle(tiny_export)
    trt_gen = BundleGenerator(bundle, _backend(tiny_export, built))
    ort_gen = BundleGenerator(bundle, OrtBackend(bundle, OrtOptions(threads=1)))
    texts = ["The quick brown fox jumps over the lazy dog.", "A second, longer text about the sea and the sky."]
    for (a, n), (b, m) in zip(trt_gen.nll(texts), ort_gen.nll(texts)):
        assert n == m and a == pytest.approx(b, rel=1e-6)


def test_prefill_and_decode_use_their_profiles(tiny_export: Path, built):
    _, _, trt = built
    backend = _backend(tiny_export, built)
    start = len(trt.calls)
    gen = BundleGenerator(load_bundle(tiny_export), backend)
    gen.generate([GenerationRequest("Hello there", chat=False)], GenerationConfig(max_new_tokens=5))
    runs = [c for c in trt.calls[start:] if c[0] == "execute_async_v3" and c[1].endswith("decoder.onnx")]
    assert [r[2] for r in runs] == [0, 1, 1, 1, 1]
    assert runs[0][3]["past_key_values.0.key"][2] == 0
    assert [r[3]["past_key_values.1.value"][2] for r in runs[1:]] == [runs[0][3]["position_ids"][1] + i
                                                                       for i in range(4)]


def test_kv_slots_ping_pong_and_stale_caches_are_refused(tiny_export: Path, built):
    backend = _backend(tiny_export, built)
    spec = backend.bundle.spec
    x = backend.embed(np.array([[5, 6, 7]], dtype=np.int64))
    logits0, c1 = backend.decode(x, np.ones((1, 3), np.int64), np.arange(3)[None], backend.empty_cache(1))
    step = backend.embed(np.array([[8]], dtype=np.int64))
    _, c2 = backend.decode(step, np.ones((1, 4), np.int64), np.array([[3]]), c1)
    assert c1.tensors[0].slot != c2.tensors[0].slot and c2.length == 4
    _, c3 = backend.decode(step, np.ones((1, 5), np.int64), np.array([[4]]), c2)  # overwrites c1's slot
    with pytest.raises(RuntimeError, match="stale KV cache"):
        backend.decode(step, np.ones((1, 4), np.int64), np.array([[3]]), c1)
    # a decode from c2 is still valid, and gives what ONNX Runtime gives on the same inputs
    ort = OrtBackend(backend.bundle, OrtOptions(threads=1))
    o1 = ort.decode(x, np.ones((1, 3), np.int64), np.arange(3)[None], ort.empty_cache(1))[1]
    o2 = ort.decode(step, np.ones((1, 4), np.int64), np.array([[3]]), o1)[1]
    ours, _ = backend.decode(step, np.ones((1, 5), np.int64), np.array([[4]]), c2)
    theirs, _ = ort.decode(step, np.ones((1, 5), np.int64), np.array([[4]]), o2)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert ours.shape == (1, spec.vocab_size) and ours.dtype == np.float32


def test_last_only_reads_the_last_position_of_each_row(tiny_export: Path, built):
    backend = _backend(tiny_export, built)
    x = backend.embed(np.array([[5, 6, 7, 9], [10, 11, 12, 13]], dtype=np.int64))
    mask, pos = np.ones((2, 4), np.int64), np.tile(np.arange(4), (2, 1))
    full, _ = backend.decode(x, mask, pos, backend.empty_cache(2), last_only=False)
    last, _ = backend.decode(x, mask, pos, backend.empty_cache(2))
    assert full.shape == (2, 4, backend.bundle.spec.vocab_size)
    np.testing.assert_array_equal(last, full[:, -1])


def test_kv_buffers_grow_geometrically(tiny_export: Path, built):
    _, cuda, _ = built
    backend = _backend(tiny_export, built)
    before = len([c for c in cuda.calls if c[0] == "malloc"])
    BundleGenerator(backend.bundle, backend).generate([GenerationRequest("Hi", chat=False)],
                                                      GenerationConfig(max_new_tokens=60))
    mallocs = len([c for c in cuda.calls if c[0] == "malloc"]) - before
    kv_buffers = 2 * 2 * backend.bundle.spec.num_layers  # 2 slots x (key, value) x layers
    assert mallocs < kv_buffers * 10 + 12  # 1.5x growth: ~7 per buffer over 60 steps, not one per step (>= 480)
    spec = backend.bundle.spec
    assert backend.kv_bytes() < 2 * 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 4 * 70 * 2


def test_limits_beyond_the_profiles_are_a_clear_error(tiny_export: Path, tmp_path: Path):
    cuda = fakes.FakeCuda()
    trt = fakes.fake_tensorrt(cuda)
    engines = _engines(tiny_export, tmp_path / "small", cuda, trt, max_batch=1, max_prompt=30, opt_prompt=16,
                       max_context=40, opt_context=32)
    backend = TrtBackend(load_bundle(tiny_export), TrtOptions(engines=engines), trt=trt, cuda=cuda)
    gen = BundleGenerator(backend.bundle, backend)
    with pytest.raises(UserError, match="no optimization profile .*rebuild the engines with larger limits"):
        gen.generate([GenerationRequest("What is this?", Image.new("RGB", (30, 30)))], GenerationConfig())
    with pytest.raises(UserError, match="no optimization profile"):  # batch 2 > max_batch 1
        gen.generate([GenerationRequest("a", chat=False)] * 2, GenerationConfig(max_new_tokens=2), batch_size=2)


def test_close_frees_every_buffer(tiny_export: Path, tmp_path: Path):
    cuda = fakes.FakeCuda()
    trt = fakes.fake_tensorrt(cuda)
    engines = _engines(tiny_export, tmp_path / "e", cuda, trt)
    backend = TrtBackend(load_bundle(tiny_export), TrtOptions(engines=engines), trt=trt, cuda=cuda)
    BundleGenerator(backend.bundle, backend).generate(_requests()[:2], GenerationConfig(max_new_tokens=4))
    assert cuda.live_bytes() > 0
    backend.close()
    assert cuda.live_bytes() == 0 and not cuda.streams
    d = backend.describe()
    assert d["backend"] == "tensorrt" and d["providers"] == ["TensorRT 10.3.0"] and d["compute_capability"] == "8.7"


def test_engines_must_fit_bundle_tensorrt_and_gpu(tiny_export: Path, built, tmp_path: Path):
    engines, cuda, trt = built
    bundle = load_bundle(tiny_export)
    with pytest.raises(UserError, match="needs the engines directory"):
        TrtBackend(bundle, TrtOptions(), trt=trt, cuda=cuda)
    with pytest.raises(UserError, match="built with TensorRT 10.3.0, this is TensorRT 10.4.0"):
        TrtBackend(bundle, TrtOptions(engines=engines), trt=fakes.fake_tensorrt(cuda, version="10.4.0"), cuda=cuda)
    with pytest.raises(UserError, match="compute capability 8.7, this GPU is 9.0"):
        TrtBackend(bundle, TrtOptions(engines=engines), trt=trt, cuda=fakes.FakeCuda(compute_capability=(9, 0)))
    other = tmp_path / "other"
    import shutil

    shutil.copytree(tiny_export, other)
    spec = json.loads((other / "runtime.json").read_text())
    spec["pad_token_id"] = 0
    (other / "runtime.json").write_text(json.dumps(spec))
    from runtime.artifacts import read_manifest, write_manifest

    write_manifest(other, "sgm-bundle", **{k: v for k, v in read_manifest(tiny_export).items()
                                           if k not in ("kind", "files")})
    with pytest.raises(UserError, match="built from another bundle"):
        TrtBackend(load_bundle(other), TrtOptions(engines=engines), trt=trt, cuda=cuda)
    with pytest.raises(UserError, match="does not exist"):
        TrtBackend(bundle, TrtOptions(engines=tmp_path / "nowhere"), trt=trt, cuda=cuda)


def test_corrupt_engine_is_refused(tiny_export: Path, tmp_path: Path):
    cuda = fakes.FakeCuda()
    trt = fakes.fake_tensorrt(cuda)
    engines = _engines(tiny_export, tmp_path / "e", cuda, trt)
    (engines / "vision.engine").write_bytes(b"garbage")
    with pytest.raises(UserError, match="does not match its sha256"):
        TrtBackend(load_bundle(tiny_export), TrtOptions(engines=engines), trt=trt, cuda=cuda)
    with pytest.raises(UserError, match="could not deserialize"):
        TrtBackend(load_bundle(tiny_export), TrtOptions(engines=engines, verify=False), trt=trt, cuda=cuda)
    assert not cuda.streams  # the failed open gave its stream back


def test_without_tensorrt_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError, match="TensorRT is not available here.*onnxruntime backend"):
        import_tensorrt()


def test_module_imports_without_tensorrt_or_cuda():
    import subprocess

    code = ("import sys; sys.modules['tensorrt'] = None; import runtime.backends.trt, runtime.backends.cudart; "
            "assert 'torch' not in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
