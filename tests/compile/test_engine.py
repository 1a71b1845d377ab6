"""compile.engine without TensorRT: profiles derived from runtime.json, the build path against a fake
`tensorrt` module that records and checks every call, the options, and the errors (no TensorRT, parser
failure, failed build, mismatched graph) that leave nothing behind."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from compile import engine as eng
from runtime.bundle import BundleSpec, load_bundle
from runtime.errors import UserError


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fakes = _load("trt_fakes")
bundles = _load("bundle_fakes")

LIMITS = eng.EngineLimits(max_batch=4, opt_batch=2, max_prompt=300, opt_prompt=64, max_context=1000, opt_context=256,
                          max_images=2)


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return bundles.make_bundle(tmp_path / "bundle")


@pytest.fixture()
def spec() -> BundleSpec:
    return BundleSpec.from_dict(bundles.SPEC)


def test_profiles_follow_runtime_json(spec: BundleSpec):
    profiles = eng.graph_profiles(spec, LIMITS)
    assert [p.name for p in profiles["decoder"]] == ["prefill", "decode"]
    (vision,) = profiles["vision"]
    assert vision.shapes == {"pixel_values": ((1, 3, 30, 30), (1, 3, 30, 30), (2, 3, 30, 30))}
    (embed,) = profiles["embed"]
    assert embed.shapes == {"input_ids": ((1, 1), (1, 64), (4, 300))}
    prefill, decode = profiles["decoder"]
    assert set(prefill.shapes) == {"inputs_embeds", "attention_mask", "position_ids"} | {
        f"past_key_values.{i}.{k}" for i in range(3) for k in ("key", "value")}
    assert prefill.shapes["inputs_embeds"] == ((1, 1, 32), (2, 64, 32), (4, 300, 32))
    assert prefill.shapes["attention_mask"] == ((1, 1), (2, 64), (4, 300))
    assert prefill.shapes["past_key_values.2.value"] == ((1, 2, 0, 8), (2, 2, 0, 8), (4, 2, 0, 8))
    assert decode.shapes["inputs_embeds"] == ((1, 1, 32), (2, 1, 32), (4, 1, 32))
    assert decode.shapes["position_ids"] == ((1, 1), (2, 1), (4, 1))
    assert decode.shapes["past_key_values.0.key"] == ((1, 2, 1, 8), (2, 2, 255, 8), (4, 2, 999, 8))
    assert decode.shapes["attention_mask"] == ((1, 2), (2, 256), (4, 1000))


def test_kv_bytes_per_token(spec: BundleSpec):
    assert eng.kv_bytes_per_token(spec, 2) == 2 * 3 * 2 * 8 * 2


@pytest.mark.parametrize("limits, message", [
    (eng.EngineLimits(max_prompt=2000, max_context=1000), "exceeds max_context"),
    (eng.EngineLimits(opt_batch=3, max_batch=2), "opt_batch (3) is larger than max_batch"),
    (eng.EngineLimits(max_prompt=9, max_context=100, opt_prompt=9, opt_context=50), "cannot hold one image"),
    (eng.EngineLimits(max_batch=0), "max_batch must be a positive integer"),
])
def test_bad_limits_are_refused(spec: BundleSpec, limits: eng.EngineLimits, message: str):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        eng.graph_profiles(spec, limits)


def _build(bundle: Path, out: Path, **kwargs):
    cuda = fakes.FakeCuda()
    trt = fakes.fake_tensorrt(cuda, fail_build=kwargs.pop("fail_build", None))
    options = eng.BuildOptions(**{"limits": LIMITS, **kwargs})
    return eng.build_engines(bundle, out, options, trt=trt, cuda=cuda), trt, cuda


def test_build_passes_profiles_and_options_to_tensorrt(bundle: Path, tmp_path: Path):
    out = tmp_path / "engines"
    manifest, trt, cuda = _build(bundle, out, workspace_mib=512, optimization_level=5)
    assert sorted(p.name for p in out.iterdir()) == ["decoder.engine", "embed.engine", "manifest.json",
                                                     "timing.cache", "vision.engine"]
    builds = [c for c in trt.calls if c[0] == "build"]
    assert [Path(c[1]).name for c in builds] == ["vision.onnx", "embed.onnx", "decoder.onnx"]
    profiles = eng.graph_profiles(load_bundle(bundle).spec, LIMITS)
    for call, graph in zip(builds, ("vision", "embed", "decoder")):
        _, _, shapes, pools, level, flags = call
        assert shapes == [p.shapes for p in profiles[graph]]
        assert pools == {"WORKSPACE": 512 << 20} and level == 5
        assert flags == 1 << 1  # STRONGLY_TYPED
    # one timing cache, created empty, shared by the three builds and saved
    assert [c for c in trt.calls if c[0] == "create_timing_cache"] == [("create_timing_cache", b"")]
    assert (out / "timing.cache").read_bytes() == b"fake-timing-cache:3"
    assert manifest["kind"] == "sgm-engines"
    assert manifest["bundle"]["fingerprint"] == load_bundle(bundle).fingerprint
    assert manifest["bundle"]["precision"] == "fp32"
    assert manifest["tensorrt"] == {"version": "10.3.0", "strongly_typed": True}
    assert manifest["device"] == {"index": 0, "name": "Fake Orin", "compute_capability": "8.7"}
    assert manifest["engines"]["decoder"]["profiles"][1]["shapes"]["attention_mask"] == [[1, 2], [2, 256], [4, 1000]]
    assert manifest["limits"]["max_context"] == 1000
    assert manifest["options"] == {"workspace_mib": 512, "optimization_level": 5, "timing_cache_in": None}
    assert manifest["kv_cache"]["bytes_per_token"] == 2 * 3 * 2 * 8 * 4
    assert manifest["kv_cache"]["max_bytes"] == 2 * 2 * 3 * 2 * 8 * 4 * 4 * 1000
    assert json.loads((out / "decoder.engine").read_bytes())["onnx"] == str((bundle / "decoder.onnx").resolve())


def test_timing_cache_from_an_earlier_build(bundle: Path, tmp_path: Path):
    seed = tmp_path / "earlier.cache"
    seed.write_bytes(b"cache from an earlier build")
    manifest, trt, _ = _build(bundle, tmp_path / "engines", timing_cache=seed)
    assert ("create_timing_cache", b"cache from an earlier build") in trt.calls
    assert len(manifest["options"]["timing_cache_in"]) == 64
    seed.write_bytes(b"bad")
    with pytest.raises(UserError, match="refused the timing cache"):
        _build(bundle, tmp_path / "engines2", timing_cache=seed)
    assert not (tmp_path / "engines2").exists()


def test_a_failed_build_leaves_nothing(bundle: Path, tmp_path: Path):
    out = tmp_path / "engines"
    with pytest.raises(UserError, match="failed to build the decoder engine"):
        _build(bundle, out, fail_build="decoder.onnx")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_parser_errors_name_the_graph(tmp_path: Path):
    bundle = bundles.make_bundle(tmp_path / "bundle", decoder_bytes=b"not an onnx file")
    with pytest.raises(UserError, match="ONNX parser rejected the decoder graph"):
        _build(bundle, tmp_path / "engines")


def test_graph_inputs_must_match_runtime_json(tmp_path: Path):
    spec = json.loads(json.dumps(bundles.SPEC))
    bundle = bundles.make_bundle(tmp_path / "bundle", spec)
    text = json.loads((bundle / "runtime.json").read_text())
    text["num_layers"] = 2  # the graph has 3 layers of past key/values
    (bundle / "runtime.json").write_text(json.dumps(text))
    from runtime.artifacts import write_manifest

    write_manifest(bundle, "sgm-bundle", format_version=1)
    with pytest.raises(UserError, match="graph's inputs .* differ from runtime.json"):
        _build(bundle, tmp_path / "engines")


def test_tensorrt_without_strong_typing_is_refused():
    trt = fakes.fake_tensorrt(fakes.FakeCuda(), version="8.6.1")
    del trt.NetworkDefinitionCreationFlag
    with pytest.raises(UserError, match="TensorRT 8.6.1 has no strongly typed networks"):
        eng.network_flags(trt)


def test_missing_tensorrt_is_a_clear_error(bundle: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    with pytest.raises(UserError, match="TensorRT is not available here.*JetPack"):
        eng.build_engines(bundle, tmp_path / "engines", eng.BuildOptions(limits=LIMITS))
    assert eng.cli.run(eng.main, ["--bundle", str(bundle), "--out", str(tmp_path / "engines")]) == 2
    assert "error: TensorRT is not available here" in capsys.readouterr().err
    assert not (tmp_path / "engines").exists()


def test_print_profiles_needs_no_tensorrt(bundle: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert eng.cli.run(eng.main, ["--bundle", str(bundle), "--print-profiles", "--max-context", "64",
                                  "--max-prompt", "32", "--opt-prompt", "16", "--opt-context", "32"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["decoder"][1]["shapes"]["attention_mask"] == [[1, 2], [1, 32], [1, 64]]


def test_cli_limit_errors(bundle: Path, capsys):
    assert eng.cli.run(eng.main, ["--bundle", str(bundle), "--print-profiles", "--max-prompt", "4"]) == 2
    assert "cannot hold one image" in capsys.readouterr().err
    assert eng.cli.run(eng.main, ["--bundle", str(bundle), "--optimization-level", "9", "--out", "x"]) == 2
    assert "--optimization-level must be in 0..5" in capsys.readouterr().err
