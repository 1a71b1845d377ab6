"""compile.jetson: the Jetson Orin directory holds a TensorRT-parsable bundle, a torch-free copy of the runtime
and engine builder, the judge and dataset for an offline smoke run, and scripts that work as shipped: here they
run end to end with a stand-in `tensorrt` package (tests/trt_fakes.py, which runs the graphs in ONNX Runtime)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compile import jetson
from runtime.bundle import load_bundle
from runtime.errors import UserError

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bundles = _load("bundle_fakes")

FAKE_TENSORRT = '''"""A stand-in tensorrt package for the shipped scripts: tests/trt_fakes.py with a fake CUDA runtime."""
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("trt_fakes", {fakes!r})
_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fakes)
_cuda = _fakes.FakeCuda()
globals().update({{k: v for k, v in vars(_fakes.fake_tensorrt(_cuda, version={version!r})).items()
                   if not k.startswith("__") or k == "__version__"}})
import runtime.backends.cudart as _cudart
_cudart.CudaRuntime = lambda: _cuda
'''


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from compile.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("jetson") / "bundle"
    export_bundle("tiny-random-llava", out)
    return out


@pytest.fixture(scope="module")
def shipped(tiny: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("jetson-out") / "jetson"
    return out, jetson.jetson_bundle(tiny, out)


def _env(out: Path, fake: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SGM_CACHE")}
    env["PYTHON"] = sys.executable
    if fake is not None:
        env["PYTHONPATH"] = str(fake)
    return env


def test_layout_and_manifest(shipped, tiny: Path):
    out, manifest = shipped
    for rel in ("bundle/decoder.onnx", "bundle/manifest.json", "code/runtime/backends/trt.py",
                "code/runtime/backends/cudart.py", "code/compile/engine.py", "code/compile/__init__.py", "code/runtime/jetson_smoke.py",
                "build_engines.sh", "smoke.sh", "requirements-jetson.txt", "README.md",
                "cache/derived/judge-jigsaw-bilstm-v3/model.onnx", "data/mmtoxicqa/items.jsonl"):
        assert (out / rel).is_file(), rel
    assert not list((out / "code").rglob("__pycache__"))
    assert not (out / "code" / "compile" / "quantize").exists() and not (out / "code" / "calib").exists()
    assert os.access(out / "build_engines.sh", os.X_OK) and os.access(out / "smoke.sh", os.X_OK)
    assert manifest["kind"] == "sgm-jetson-bundle"
    assert manifest["bundle"]["fingerprint"] == load_bundle(tiny).fingerprint
    assert load_bundle(out / "bundle").fingerprint == load_bundle(tiny).fingerprint
    assert [b["device"] for b in manifest["budgets"]] == [d for d, _ in jetson.ORIN]
    assert "onnxruntime>=1.20" in (out / "requirements-jetson.txt").read_text()
    assert "torch" not in (out / "requirements-jetson.txt").read_text()


def test_shipped_code_imports_without_torch(shipped):
    out, _ = shipped
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "import compile.engine, runtime.backends.trt, runtime.generate, runtime.judges, runtime.mmtoxicqa.runner; "
            "print(compile.engine.__file__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=out,
                          env={**_env(out, None), "PYTHONPATH": str(out / "code")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "code" / "compile" / "engine.py")


def test_readme_budget_table(shipped, tiny: Path):
    out, manifest = shipped
    text = (out / "README.md").read_text()
    assert "| Orin Nano 4GB | 4096 |" in text and "| AGX Orin 64GB | 65536 |" in text
    assert "TensorRT 10.3" in text and "TensorRT 11" in text and "not measured on a Jetson" in text
    nano = manifest["budgets"][0]
    assert nano["fits"] and nano["max_context"] == jetson.CONTEXT_CAP  # a 0.4 MB model fits everywhere


def test_budget_of_a_7b_class_bundle(tmp_path: Path, monkeypatch):
    """LLaVA-1.5-7B's shape in fp16 (13.5 GB of weights): only the 32 and 64 GB AGX Orin take it, and the KV cache
    (2 slots x 2 x 32 layers x 32 heads x 128 x 2 bytes = 1 MiB per position) bounds the 32 GB one's context."""
    spec = {**bundles.SPEC, "dtype": "float16", "num_layers": 32, "num_kv_heads": 32, "head_dim": 128,
            "hidden_size": 4096, "vocab_size": 32064, "num_image_tokens": 576}
    bundle = load_bundle(bundles.make_bundle(tmp_path / "b7", spec))
    monkeypatch.setattr(jetson, "weights_mb", lambda b: 13.5 * 1024)
    rows = {r.device: r for r in jetson.budgets(bundle, 1024)}
    assert [d for d, r in rows.items() if r.fits] == ["AGX Orin 32GB", "AGX Orin 64GB"]
    assert rows["AGX Orin 32GB"].kv_mb_per_1k_tokens == 1024.0
    free = 32768 - jetson.SYSTEM_RESERVE_MB - jetson.HOST_RUNTIME_MB - 13.5 * 1024 - rows["AGX Orin 32GB"].activations_mb
    assert rows["AGX Orin 32GB"].max_context == min(int(free), jetson.CONTEXT_CAP)
    assert rows["Orin NX 16GB"].max_context < 512 and not rows["Orin Nano 8GB"].fits


def test_budgets_of_a_real_bundle(tiny: Path):
    rows = jetson.budgets(load_bundle(tiny), 1024)
    assert all(r.weights_mb < 1 for r in rows)
    assert [r.total_mb for r in rows] == [4096, 8192, 8192, 16384, 32768, 65536]


def test_contrib_ops_are_refused(tmp_path: Path):
    import onnx

    from runtime.artifacts import write_manifest

    src = bundles.make_bundle(tmp_path / "src")
    model = onnx.load(str(src / "decoder.onnx"))
    model.graph.node[0].domain, model.graph.node[0].op_type = "com.microsoft", "MatMulNBits"
    onnx.save(model, str(src / "decoder.onnx"))
    write_manifest(src, "sgm-bundle", format_version=1, precision={"name": "int4"})
    with pytest.raises(UserError, match=r"\(int4\) uses ONNX Runtime contrib ops \(MatMulNBits\).*int4-qdq"):
        jetson.jetson_bundle(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_build_script_refuses_without_tensorrt(shipped, tmp_path: Path):
    out, _ = shipped
    blocker = tmp_path / "block"
    (blocker / "tensorrt").mkdir(parents=True)
    (blocker / "tensorrt" / "__init__.py").write_text("raise ImportError('libnvinfer.so.10: cannot open')\n")
    done = subprocess.run(["bash", str(out / "build_engines.sh")], capture_output=True, text=True,
                          env=_env(out, blocker))
    assert done.returncode == 2 and "TensorRT's Python bindings are not importable" in done.stderr
    old = tmp_path / "old"
    (old / "tensorrt").mkdir(parents=True)
    (old / "tensorrt" / "__init__.py").write_text("__version__ = '8.6.2'\n")
    done = subprocess.run(["bash", str(out / "build_engines.sh")], capture_output=True, text=True, env=_env(out, old))
    assert done.returncode == 2 and "TensorRT 8.6.2 has no strongly typed networks" in done.stderr
    assert not (out / "engines").exists()


def test_scripts_build_engines_and_run_the_smoke(shipped, tmp_path: Path):
    """build_engines.sh and smoke.sh as shipped, with the stand-in tensorrt package on PYTHONPATH."""
    out, shipped_manifest = shipped
    fake = tmp_path / "fake"
    (fake / "tensorrt").mkdir(parents=True)
    (fake / "tensorrt" / "__init__.py").write_text(FAKE_TENSORRT.format(fakes=str(TESTS / "trt_fakes.py"),
                                                                      version="10.3.0"))
    small = {**_env(out, fake), "MAX_CONTEXT_OVERRIDE": "600"}
    done = subprocess.run(["bash", str(out / "build_engines.sh")], capture_output=True, text=True, env=small)
    assert done.returncode == 0, done.stderr
    assert "TensorRT 10.3.0" in done.stdout and "max context 600, max prompt 600" in done.stdout
    manifest = json.loads((out / "engines" / "manifest.json").read_text())
    assert manifest["tensorrt"]["version"] == "10.3.0" and manifest["limits"]["max_context"] == 600
    assert manifest["engines"]["decoder"]["profiles"][1]["shapes"]["attention_mask"][2] == [1, 600]
    assert manifest["options"]["timing_cache_in"] is None
    smoke = subprocess.run(["bash", str(out / "smoke.sh"), "--limit", "2", "--max-new-tokens", "6"],
                           capture_output=True, text=True, env=small)
    assert smoke.returncode == 0, smoke.stderr
    info = json.loads((out / "smoke" / "smoke.json").read_text())
    skipped = info["skipped_over_engine_limits"]
    assert skipped and all(s["prompt_tokens"] + 6 > 600 for s in skipped)  # the long jailbreak templates
    assert "longer than the engines' limits" in smoke.stdout
    # the default limits take the longest shipped prompt; the rebuild reuses the saved timing cache
    env = _env(out, fake)
    again = subprocess.run(["bash", str(out / "build_engines.sh")], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    manifest = json.loads((out / "engines" / "manifest.json").read_text())
    assert manifest["options"]["timing_cache_in"] is not None
    assert manifest["limits"]["max_prompt"] == shipped_manifest["assumptions"]["max_prompt"]
    assert manifest["limits"]["max_prompt"] > shipped_manifest["assumptions"]["longest_smoke_prompt"]
    smoke = subprocess.run(["bash", str(out / "smoke.sh"), "--limit", "2", "--max-new-tokens", "6",
                            "--out", str(tmp_path / "smoke2")], capture_output=True, text=True, env=env)
    assert smoke.returncode == 0, smoke.stderr
    assert "smoke MM-TOXIC-QA (12 items): harmful rate" in smoke.stdout
    report = json.loads((tmp_path / "smoke2" / "report.json").read_text())
    assert report["harmful_rate"]["total"] == 8 and report["visual_accuracy"]["total"] == 2
    info = json.loads((tmp_path / "smoke2" / "smoke.json").read_text())
    assert info["backend"]["backend"] == "tensorrt" and info["items"] == 12 and not info["skipped_over_engine_limits"]
