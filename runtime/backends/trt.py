"""TensorRT backend: a bundle's three graphs as TensorRT engines built by `python -m compile.engine`.

The engines directory (kind "sgm-engines") names the bundle it was built from (its fingerprint), the
TensorRT version and the GPU; engines are not portable across either, so a mismatch is refused with the
command that rebuilds them. `tensorrt` is imported only when a backend is opened, and the CUDA runtime is
reached through ctypes (runtime.backends.cudart), so this module imports on machines without either.

Execution follows TensorRT's name-based API: one execution context per optimization profile,
`set_input_shape` + `set_tensor_address` for every I/O tensor, `execute_async_v3` on one CUDA stream.
The decoder's key/value cache stays on the device in two slots used in turn (ping-pong): a step reads the
past from one slot and writes the present into the other, because a graph's present tensor [b, h, past + s, d]
cannot alias its past tensor. A KVCache therefore stays valid until the second decode after it; using an
older one is an error rather than silent garbage. Buffers grow on demand (logits, KV, staging).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.artifacts import read_manifest
from runtime.backends.base import Backend, KVCache
from runtime.bundle import Bundle
from runtime.errors import UserError

ENGINES_KIND = "sgm-engines"
ENGINES_FORMAT_VERSION = 1
ENGINE_SUFFIX = ".engine"
GRAPH_ORDER = ("vision", "embed", "decoder")
_LOG_LEVELS = ("verbose", "info", "warning", "error", "internal_error")
_MIN_ALLOC = 256
_GROWTH = 1.5


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a UserError that says how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as e:  # the bindings import but fail to load libnvinfer: OSError or ImportError
        raise UserError(
            f"TensorRT is not available here ({type(e).__name__}: {e}). On Jetson it ships with JetPack "
            "(python3-libnvinfer; JetPack 6.x = TensorRT 10.3); on an x86 GPU host install it from NVIDIA "
            "(pip install tensorrt, or the TensorRT tarball/container). Without TensorRT use the onnxruntime "
            "backend on the same bundle") from e


def trt_version(trt: Any) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def trt_logger(trt: Any, level: str) -> Any:
    if level not in _LOG_LEVELS:
        raise UserError(f"TensorRT log level {level!r} is not one of {', '.join(_LOG_LEVELS)}")
    return trt.Logger(getattr(trt.Logger, level.upper()))


@dataclass(frozen=True)
class TrtOptions:
    """Where the engines are, which GPU runs them, and how much TensorRT logs."""

    engines: str | os.PathLike | None = None
    device: int = 0
    verify: bool = True
    log_level: str = "warning"


def load_engines_manifest(directory: str | os.PathLike, bundle: Bundle, verify: bool = True) -> dict[str, Any]:
    """Read and check an engines directory against the bundle it must have been built from."""
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"engines directory {root} does not exist; build it on this device with "
                        f"`python -m compile.engine --bundle {bundle.root} --out {root}`")
    manifest = read_manifest(root, verify=verify)
    if manifest.get("kind") != ENGINES_KIND:
        raise UserError(f"{root} holds a {manifest.get('kind')!r} artifact, not TensorRT engines ({ENGINES_KIND!r})")
    if manifest.get("format_version", 0) > ENGINES_FORMAT_VERSION:
        raise UserError(f"{root} has engines format {manifest.get('format_version')}, this runtime reads up to "
                        f"{ENGINES_FORMAT_VERSION}; upgrade the runtime or rebuild the engines")
    made_from = manifest.get("bundle", {}).get("fingerprint")
    if made_from != bundle.fingerprint:
        raise UserError(f"the engines in {root} were built from another bundle (fingerprint {str(made_from)[:12]}..., "
                        f"this bundle is {bundle.fingerprint[:12]}...); rebuild them with "
                        f"`python -m compile.engine --bundle {bundle.root} --out DIR`")
    for graph in GRAPH_ORDER:
        entry = manifest.get("engines", {}).get(graph)
        if not entry or entry.get("file") not in manifest.get("files", {}):
            raise UserError(f"{root}: the {graph} engine is missing from its manifest; rebuild the engines")
    return manifest


class _Buffer:
    """A device allocation that grows on demand (its contents are not kept when it grows)."""

    def __init__(self, cuda: Any):
        self.cuda = cuda
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes or not self.ptr:
            size = max(int(nbytes), _MIN_ALLOC, int(self.nbytes * _GROWTH) if self.ptr else 0)
            self.release()
            self.ptr = self.cuda.malloc(size)
            self.nbytes = size
        return self.ptr

    def release(self) -> None:
        if self.ptr:
            self.cuda.free(self.ptr)
        self.ptr, self.nbytes = 0, 0


@dataclass(frozen=True)
class _KVHandle:
    """Where a cache lives: slot -1 (empty) or 0/1, and the slot's version when it was written."""

    slot: int
    version: int


class _Engine:
    """One deserialized engine: an execution context per optimization profile, its I/O names and dtypes."""

    def __init__(self, trt: Any, runtime: Any, path: Path, graph: str, stream: int):
        self.graph = graph
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT could not deserialize {path}: it was built by another TensorRT version or "
                            "for another GPU; rebuild the engines on this device with python -m compile.engine")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.num_profiles = int(self.engine.num_optimization_profiles)
        self.ranges = [{n: tuple(tuple(int(x) for x in dims) for dims in self.engine.get_tensor_profile_shape(n, p))
                        for n in self.inputs} for p in range(self.num_profiles)]
        self.contexts = []
        for p in range(self.num_profiles):
            context = self.engine.create_execution_context()
            if context is None:
                raise UserError(f"TensorRT could not create an execution context for the {graph} engine "
                                "(out of device memory?)")
            if not context.set_optimization_profile_async(p, stream):
                raise UserError(f"TensorRT refused optimization profile {p} of the {graph} engine")
            self.contexts.append(context)

    def check_io(self, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        missing = [n for n in inputs if n not in self.inputs] + [n for n in outputs if n not in self.outputs]
        extra = sorted(set(self.inputs) - set(inputs))
        if missing or extra:
            raise UserError(f"the {self.graph} engine does not match runtime.json: "
                            + (f"missing {', '.join(missing[:4])}" if missing else "")
                            + ("; " if missing and extra else "")
                            + (f"unexpected inputs {', '.join(extra[:4])}" if extra else "")
                            + "; rebuild the engines from this bundle")

    def fits(self, profile: int, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        for name, shape in shapes.items():
            lo, _, hi = self.ranges[profile][name]
            if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                return False
        return True

    def choose(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """The first optimization profile whose ranges hold every input shape."""
        for p in range(self.num_profiles):
            if self.fits(p, shapes):
                return p
        shown = list(shapes)[:3]
        limits = "; ".join(f"profile {p}: " + ", ".join(f"{n} {list(ranges[n][0])}..{list(ranges[n][2])}" for n in shown)
                           for p, ranges in enumerate(self.ranges))
        asked = ", ".join(f"{n} {list(shapes[n])}" for n in shown)
        raise UserError(f"the {self.graph} engine has no optimization profile for {asked} ({limits}); rebuild the "
                        "engines with larger limits (python -m compile.engine --max-batch/--max-prompt/--max-context)")

    def run(self, profile: int, shapes: Mapping[str, tuple[int, ...]], addresses: Mapping[str, int],
            outputs: Mapping[str, _Buffer], stream: int) -> dict[str, tuple[int, ...]]:
        """Set shapes and addresses, size the output buffers, enqueue; returns the output shapes."""
        context = self.contexts[profile]
        for name in self.inputs:
            if not context.set_input_shape(name, shapes[name]):
                raise UserError(f"TensorRT refused shape {list(shapes[name])} for {name} of the {self.graph} engine")
        out_shapes = {}
        for name in self.outputs:
            shape = tuple(int(x) for x in context.get_tensor_shape(name))
            if any(x < 0 for x in shape):
                raise RuntimeError(f"{self.graph} engine: output {name} has unresolved shape {list(shape)}")
            out_shapes[name] = shape
            outputs[name].ensure(int(np.prod(shape, dtype=np.int64)) * self.dtypes[name].itemsize)
        for name in self.inputs:
            context.set_tensor_address(name, addresses[name])
        for name in self.outputs:
            context.set_tensor_address(name, outputs[name].ptr)
        if not context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT failed to enqueue the {self.graph} engine (see TensorRT's log above)")
        return out_shapes


class TrtBackend(Backend):
    """A bundle's vision, embed and decoder engines on one GPU."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, options: TrtOptions = TrtOptions(), trt: Any = None, cuda: Any = None):
        if options.engines is None:
            raise UserError("the tensorrt backend needs the engines directory (engines=DIR), built on this device "
                            f"with `python -m compile.engine --bundle {bundle.root} --out DIR`")
        self.bundle = bundle
        self.options = options
        self.trt = trt if trt is not None else import_tensorrt()
        if cuda is None:
            from runtime.backends.cudart import CudaRuntime

            cuda = CudaRuntime()
        self.cuda = cuda
        self.engines_dir = Path(options.engines)
        self.manifest = load_engines_manifest(self.engines_dir, bundle, verify=options.verify)
        built_with = self.manifest.get("tensorrt", {}).get("version")
        if built_with != trt_version(self.trt):
            raise UserError(f"the engines in {self.engines_dir} were built with TensorRT {built_with}, this is "
                            f"TensorRT {trt_version(self.trt)}; engines are not portable across versions: rebuild "
                            f"them here with python -m compile.engine")
        self.cuda.set_device(options.device)
        self._check_device()
        self.stream = self.cuda.stream_create()
        spec = bundle.spec
        d = spec.decoder
        self._past = d.past_names(spec.num_layers)
        self._present = d.present_names(spec.num_layers)
        try:
            runtime = self.trt.Runtime(trt_logger(self.trt, options.log_level))
            self._engines = {g: _Engine(self.trt, runtime, self.engines_dir / self.manifest["engines"][g]["file"], g,
                                        self.stream) for g in GRAPH_ORDER}
            self._engines["vision"].check_io([spec.vision.input], [spec.vision.output])
            self._engines["embed"].check_io([spec.embed.input], [spec.embed.output])
            self._engines["decoder"].check_io([d.inputs_embeds, d.attention_mask, d.position_ids, *self._past],
                                              [d.logits, *self._present])
        except BaseException:
            self.cuda.stream_destroy(self.stream)
            raise
        self._staging: dict[str, _Buffer] = {}
        self._outputs: dict[str, _Buffer] = {}
        self._kv = [[_Buffer(self.cuda) for _ in self._past] for _ in range(2)]
        self._kv_version = [0, 0]
        self._kv_dtype = self._engines["decoder"].dtypes[self._past[0]]
        self._closed = False

    def _check_device(self) -> None:
        want = self.manifest.get("device", {}).get("compute_capability")
        try:
            have = "%d.%d" % self.cuda.compute_capability(self.options.device)
        except (AttributeError, RuntimeError):
            return
        if want is not None and want != have:
            raise UserError(f"the engines in {self.engines_dir} were built for compute capability {want}, this GPU "
                            f"is {have}; engines are not portable across GPU architectures: rebuild them here")

    # -- host <-> device ------------------------------------------------------------------------------------
    def _buffer(self, pool: dict[str, _Buffer], name: str) -> _Buffer:
        if name not in pool:
            pool[name] = _Buffer(self.cuda)
        return pool[name]

    def _stage(self, engine: _Engine, name: str, array: np.ndarray, keep: list[np.ndarray]) -> int:
        host = np.ascontiguousarray(array, dtype=engine.dtypes[name])
        keep.append(host)
        ptr = self._buffer(self._staging, f"{engine.graph}:{name}").ensure(host.nbytes)
        self.cuda.memcpy_htod(ptr, host, self.stream)
        return ptr

    def _fetch(self, engine: _Engine, name: str, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, dtype=engine.dtypes[name])
        self.cuda.memcpy_dtoh(out, self._outputs[f"{engine.graph}:{name}"].ptr, self.stream)
        return out

    def _single(self, graph: str, input_name: str, output_name: str, array: np.ndarray) -> np.ndarray:
        engine = self._engines[graph]
        keep: list[np.ndarray] = []
        shapes = {input_name: tuple(int(x) for x in array.shape)}
        profile = engine.choose(shapes)
        ptr = self._stage(engine, input_name, array, keep)
        outputs = {output_name: self._buffer(self._outputs, f"{graph}:{output_name}")}
        out_shapes = engine.run(profile, shapes, {input_name: ptr}, outputs, self.stream)
        result = self._fetch(engine, output_name, out_shapes[output_name])
        self.cuda.stream_synchronize(self.stream)
        return result

    # -- the Backend interface ------------------------------------------------------------------------------
    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        io = self.bundle.spec.vision
        return self._single("vision", io.input, io.output, pixel_values)

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        io = self.bundle.spec.embed
        return self._single("embed", io.input, io.output, np.asarray(input_ids, dtype=np.int64))

    def empty_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        return KVCache(batch=batch, length=0, tensors=(_KVHandle(slot=-1, version=0),))

    def decode(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
               cache: KVCache, last_only: bool = True) -> tuple[np.ndarray, KVCache]:
        spec = self.bundle.spec
        d = spec.decoder
        b, s = inputs_embeds.shape[:2]
        if attention_mask.shape != (b, cache.length + s) or position_ids.shape != (b, s) or cache.batch != b:
            raise ValueError(f"decoder inputs do not line up: embeds {inputs_embeds.shape}, mask "
                             f"{attention_mask.shape}, positions {position_ids.shape}, cache {cache.batch}x{cache.length}")
        (handle,) = cache.tensors
        if not isinstance(handle, _KVHandle):
            raise ValueError("this KV cache was not made by the tensorrt backend")
        if handle.slot >= 0 and handle.version != self._kv_version[handle.slot]:
            raise RuntimeError("stale KV cache: its device buffers were reused by a later decode step "
                               "(a cache stays valid until the second decode after it)")
        target = 1 - handle.slot if handle.slot >= 0 else 0
        source = 1 - target  # for an empty cache: a placeholder address, nothing is read from it
        past = cache.length
        engine = self._engines["decoder"]
        kv_shape = (b, spec.num_kv_heads, past, spec.head_dim)
        shapes = {d.inputs_embeds: tuple(int(x) for x in inputs_embeds.shape), d.attention_mask: (b, past + s),
                  d.position_ids: (b, s), **{n: kv_shape for n in self._past}}
        profile = engine.choose(shapes)
        keep: list[np.ndarray] = []
        addresses = {d.inputs_embeds: self._stage(engine, d.inputs_embeds, inputs_embeds, keep),
                     d.attention_mask: self._stage(engine, d.attention_mask, attention_mask, keep),
                     d.position_ids: self._stage(engine, d.position_ids, position_ids, keep)}
        for name, buf in zip(self._past, self._kv[source]):
            addresses[name] = buf.ensure(_MIN_ALLOC) if past == 0 else buf.ptr
        self._kv_version[target] += 1
        outputs = {d.logits: self._buffer(self._outputs, f"decoder:{d.logits}")}
        outputs.update(zip(self._present, self._kv[target]))
        out_shapes = engine.run(profile, shapes, addresses, outputs, self.stream)
        logits_shape = out_shapes[d.logits]
        logits_ptr = outputs[d.logits].ptr
        dtype = engine.dtypes[d.logits]
        if last_only:
            vocab = logits_shape[-1]
            logits = np.empty((b, vocab), dtype=dtype)
            for i in range(b):
                offset = ((i * s) + s - 1) * vocab * dtype.itemsize
                self.cuda.memcpy_dtoh(logits[i], logits_ptr + offset, self.stream)
        else:
            logits = np.empty(logits_shape, dtype=dtype)
            self.cuda.memcpy_dtoh(logits, logits_ptr, self.stream)
        self.cuda.stream_synchronize(self.stream)
        new = KVCache(b, past + s, (_KVHandle(slot=target, version=self._kv_version[target]),))
        return logits.astype(np.float32, copy=False), new

    def kv_bytes(self) -> int:
        """Device memory held by the two KV slots now."""
        return sum(buf.nbytes for slot in self._kv for buf in slot)

    def describe(self) -> dict[str, Any]:
        device = self.manifest.get("device", {})
        return {"backend": self.name, "providers": [f"TensorRT {trt_version(self.trt)}"],
                "device": f"cuda:{self.options.device}", "gpu": device.get("name"),
                "compute_capability": device.get("compute_capability"), "engines": str(self.engines_dir),
                "precision": self.manifest.get("bundle", {}).get("precision")}

    def close(self) -> None:
        """Free every device buffer and the stream (the engines go with the object)."""
        if self._closed:
            return
        for buf in [*self._staging.values(), *self._outputs.values(), *(b for slot in self._kv for b in slot)]:
            buf.release()
        self.cuda.stream_destroy(self.stream)
        self._closed = True
