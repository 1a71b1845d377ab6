"""compile.jetson: the Jetson Orin directory holds a TensorRT-parsable bundle, a torch-free copy of the runtime
and engine builder, the judge and dataset for an offline smoke run, and scripts that work as shipped: here they
run end to end with a stand-in `tensorrt` package (tests/trt_fakes.py, which runs the graphs in ONNX Runtime)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
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


def fake_native_deps(root: Path) -> Path:
    """A header cache laid out as scripts/native-setup leaves it, with stand-in headers (shipped, never compiled):
    ONNX Runtime's and nlohmann's copyright files, no stb one."""
    files = {"include/onnxruntime/onnxruntime_cxx_api.h": "// stand-in\n",
             "include/onnxruntime/onnxruntime_c_api.h": "#define ORT_API_VERSION 21\n",
             "include/nlohmann/json.hpp": "// stand-in\n", "include/nlohmann/detail/macro_scope.hpp": "// stand-in\n",
             "include/stb/stb_image.h": "// stand-in\n",
             "apt-trixie/root/usr/share/doc/libonnxruntime-dev/copyright": "License: Expat\n",
             "apt-bookworm/root/usr/share/doc/nlohmann-json3-dev/copyright": "License: Expat\n",
             "apt-trixie/debs/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb": ""}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture(scope="module")
def shipped(tiny: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("jetson-out") / "jetson"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SGM_NATIVE_DEPS", str(fake_native_deps(tmp_path_factory.mktemp("native-deps"))))
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


def test_native_host_sources_headers_and_script(shipped):
    out, manifest = shipped
    repo = Path(jetson.__file__).resolve().parents[1]
    assert sorted(p.name for p in (out / "native" / "src").iterdir()) == sorted(
        p.name for p in (repo / "native" / "src").iterdir())
    for rel in ("native/CMakeLists.txt", "native/tests/unit_tests.cpp", "native/tests/bundle_test.sh",
                "native/deps/include/onnxruntime/onnxruntime_cxx_api.h", "native/deps/include/nlohmann/json.hpp",
                "native/deps/include/nlohmann/detail/macro_scope.hpp", "native/deps/include/stb/stb_image.h",
                "native/deps/licenses/libonnxruntime-dev/copyright", "build_native.sh"):
        assert (out / rel).is_file(), rel
        assert rel in manifest["files"]
    assert os.access(out / "build_native.sh", os.X_OK) and os.access(out / "native/tests/bundle_test.sh", os.X_OK)
    cmake = (out / "native" / "CMakeLists.txt").read_text()
    assert "src/main.cpp" in cmake and "tests/unit_tests.cpp" in cmake and "native/src" not in cmake.split("\n", 2)[2]
    native = manifest["native"]
    assert native["script"] == "build_native.sh" and native["ort_api_version"] == 21
    assert native["packages"] == {"libonnxruntime-dev": "1.21.0+dfsg-1"}
    assert native["licenses"] == {"libonnxruntime-dev": "native/deps/licenses/libonnxruntime-dev/copyright",
                                  "nlohmann-json3-dev": "native/deps/licenses/nlohmann-json3-dev/copyright",
                                  "libstb-dev": None}
    assert "native_reason" not in manifest
    readme = (out / "README.md").read_text()
    assert "## Optional: the native host" in readme and "`./build_native.sh`" in readme
    assert "ONNX Runtime 1.21" in readme and "versioned" in readme and "was tried on a Jetson" in readme
    for script in ("build_native.sh", "build_engines.sh", "smoke.sh"):
        done = subprocess.run(["bash", "-n", str(out / script)], capture_output=True, text=True)
        assert done.returncode == 0, (script, done.stderr)


def test_without_the_header_cache_the_native_host_is_left_out(tiny: Path, tmp_path: Path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SGM_NATIVE_DEPS", str(empty))
    manifest = jetson.jetson_bundle(tiny, tmp_path / "jetson")
    out = tmp_path / "jetson"
    assert (out / "build_engines.sh").is_file() and (out / "bundle" / "manifest.json").is_file()
    assert not (out / "native").exists() and not (out / "build_native.sh").exists()
    assert manifest["native"] is None and json.loads((out / "manifest.json").read_text())["native"] is None
    reason = manifest["native_reason"]
    assert str(empty / "include" / "onnxruntime" / "onnxruntime_cxx_api.h") in reason
    assert "run scripts/native-setup" in reason
    err = capsys.readouterr().err.splitlines()
    assert err == [f"compile.jetson: the native host is not included ({reason})"]
    readme = (out / "README.md").read_text()
    assert "## Optional: the native host\nNot included: " in readme and "scripts/native-setup" in readme


def _native_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGM_ORT_") and k not in ("CXX", "CMAKE_GENERATOR")}
    return {**env, "PYTHON": sys.executable, **extra}


BASH = shutil.which("bash") or "/bin/bash"


def _venv_ort_library() -> Path | None:
    import onnxruntime

    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.1.*"))
    return found[-1] if found else None


def test_build_native_names_what_is_missing(shipped, tmp_path: Path):
    """One line and exit 2 for: no CMake, no compiler, no library, a library older than the headers."""
    out, _ = shipped
    script = str(out / "build_native.sh")
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "dirname").symlink_to(shutil.which("dirname"))
    old = tmp_path / "lib" / "libonnxruntime.so.1.17.0"
    old.parent.mkdir()
    old.write_text("")
    newer_headers = tmp_path / "ort-include"
    newer_headers.mkdir()
    (newer_headers / "onnxruntime_cxx_api.h").write_text("// stand-in\n")
    (newer_headers / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 99\n")
    no_cxx, no_lib = tmp_path / "no-cxx", tmp_path / "nope.so"
    cases = [(_native_env(PATH=str(bare)), "error: CMake is missing"),
             (_native_env(CXX=str(no_cxx)), f"error: no C++17 compiler (CXX={no_cxx} not found)"),
             (_native_env(PYTHON="false"), "error: no libonnxruntime.so: false has no onnxruntime package"),
             (_native_env(SGM_ORT_LIBRARY=str(no_lib)), f"error: SGM_ORT_LIBRARY={no_lib} does not exist"),
             (_native_env(SGM_ORT_LIBRARY=str(old)), f"error: {old} is ONNX Runtime 1.17, older than the headers")]
    venv_lib = _venv_ort_library()
    if venv_lib is not None:  # the library found through $PYTHON's onnxruntime package
        cases.append((_native_env(SGM_ORT_INCLUDE_DIR=str(newer_headers)),
                      f"error: {venv_lib.resolve()} is ONNX Runtime 1."))
    for env, expected in cases:
        done = subprocess.run([BASH, script], capture_output=True, text=True, env=env)
        assert done.returncode == 2 and done.stderr.startswith(expected), (expected, done.stderr)
        assert len(done.stderr.splitlines()) == 1
    assert not (out / "build-native").exists()


def _native_build_blocker() -> str | None:
    """Why build_native.sh cannot build here, None when it can."""
    reason = jetson.native_missing(jetson.native_deps_dir())
    if reason:
        return f"the native header cache is incomplete: {reason}"
    if shutil.which("cmake") is None or shutil.which("make") is None:
        return "CMake or make is not installed (apt-get install cmake make)"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler (c++, g++ or clang++) on PATH"
    if _venv_ort_library() is None:
        return "this venv's onnxruntime package has no capi/libonnxruntime.so.1.*"
    return None


@pytest.mark.slow
def test_build_native_builds_sgm_run(tiny: Path, tmp_path: Path, monkeypatch):
    """The shipped build_native.sh against the real header cache and this venv's library (x86-64, -j1, niced):
    the host it builds starts, verifies the shipped bundle and passes the shipped ctest suite."""
    blocker = _native_build_blocker()
    if blocker:
        pytest.skip(blocker)
    monkeypatch.setenv("SGM_NATIVE_DEPS", str(jetson.native_deps_dir()))
    out = tmp_path / "jetson"
    assert jetson.jetson_bundle(tiny, out)["native"]["ort_api_version"] is not None
    env = _native_env(SGM_ORT_LIBRARY=str(_venv_ort_library()), SGM_NATIVE_JOBS="1")
    done = subprocess.run(["nice", "-n", "19", "bash", str(out / "build_native.sh")], capture_output=True,
                          text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    host = out / "build-native" / "sgm-run"
    assert f"sgm-run: {host} (try:" in done.stdout
    helped = subprocess.run([str(host), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: sgm-run")
    verified = subprocess.run([str(host), "verify", "--bundle", str(out / "bundle")], capture_output=True, text=True)
    assert verified.returncode == 0 and '"ok":true' in verified.stdout, verified.stderr
    tested = subprocess.run(["ctest", "--test-dir", str(out / "build-native"), "--output-on-failure"],
                            capture_output=True, text=True, env={**env, "SGM_TEST_BUNDLE": str(out / "bundle")})
    assert tested.returncode == 0 and "100% tests passed, 0 tests failed out of 2" in tested.stdout, tested.stdout
