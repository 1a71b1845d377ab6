"""Stand-ins for `tensorrt` and the CUDA runtime that record every call and check what TensorRT would check.

- `FakeCuda`: device memory as numpy byte arrays at fake addresses; every copy is bounds-checked against
  its allocation, frees of unknown pointers fail, and `live_bytes()` tells what is still allocated.
- `fake_tensorrt(cuda)`: a module object with the API subset compile.engine and runtime.backends.trt use.
  The builder validates profiles against the parsed network (every input, rank, fixed dims, min <= opt <=
  max) and serializes an "engine" as JSON naming its ONNX file; the runtime's execution context checks
  shapes against the active profile, needs every tensor address, refuses outputs that overlap inputs, and
  runs the ONNX graph in ONNX Runtime on the bytes at those addresses. So a backend's buffer bookkeeping
  is checked by real numbers: wrong offsets, sizes, stale or aliased KV buffers give wrong tokens or errors.
"""
from __future__ import annotations

import bisect
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

_NP = {1: np.float32, 10: np.float16, 7: np.int64, 6: np.int32, 9: np.bool_}


class FakeCuda:
    def __init__(self, compute_capability: tuple[int, int] = (8, 7), name: str = "Fake Orin"):
        self.memory: dict[int, np.ndarray] = {}
        self._bases: list[int] = []
        self._next = 1 << 20
        self.calls: list[tuple] = []
        self.cc = compute_capability
        self.name = name
        self.streams: set[int] = set()

    # allocation
    def malloc(self, nbytes: int) -> int:
        ptr = self._next
        self._next += (int(nbytes) + 511) // 256 * 256 + 256  # a gap after each allocation
        self.memory[ptr] = np.full(int(nbytes), 0xAB, dtype=np.uint8)  # garbage, as cudaMalloc gives
        bisect.insort(self._bases, ptr)
        self.calls.append(("malloc", ptr, int(nbytes)))
        return ptr

    def free(self, ptr: int) -> None:
        if ptr not in self.memory:
            raise AssertionError(f"cudaFree of unknown pointer {ptr:#x}")
        del self.memory[ptr]
        self._bases.remove(ptr)
        self.calls.append(("free", ptr))

    def live_bytes(self) -> int:
        return sum(a.nbytes for a in self.memory.values())

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The bytes [ptr, ptr + nbytes) inside one allocation (AssertionError when out of bounds)."""
        i = bisect.bisect_right(self._bases, ptr) - 1
        if i < 0:
            raise AssertionError(f"pointer {ptr:#x} is not in any allocation")
        base = self._bases[i]
        buf = self.memory[base]
        offset = ptr - base
        if offset + nbytes > buf.nbytes:
            raise AssertionError(f"access of {nbytes} bytes at {ptr:#x} overruns its allocation of {buf.nbytes} bytes")
        return buf[offset:offset + nbytes]

    def read(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return self.view(ptr, n).copy().view(dtype).reshape(shape)

    def write(self, ptr: int, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        self.view(ptr, data.nbytes)[:] = data

    # copies and streams
    def memcpy_htod(self, dst: int, src: np.ndarray, stream: int) -> None:
        assert src.flags.c_contiguous
        self.write(dst, src)
        self.calls.append(("htod", dst, src.nbytes))

    def memcpy_dtoh(self, dst: np.ndarray, src: int, stream: int) -> None:
        assert dst.flags.c_contiguous
        dst.view(np.uint8).reshape(-1)[:] = self.view(src, dst.nbytes)
        self.calls.append(("dtoh", src, dst.nbytes))

    def memcpy_dtod(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.view(dst, nbytes)[:] = self.view(src, nbytes)

    def stream_create(self) -> int:
        s = 7 + len(self.streams)
        self.streams.add(s)
        return s

    def stream_destroy(self, stream: int) -> None:
        self.streams.remove(stream)

    def stream_synchronize(self, stream: int) -> None:
        self.calls.append(("sync", stream))

    def set_device(self, device: int) -> None:
        self.calls.append(("set_device", device))

    def device_name(self, device: int) -> str:
        return self.name

    def compute_capability(self, device: int) -> tuple[int, int]:
        return self.cc


class _Enum:
    def __init__(self, name: str, value: int):
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return self.name


def fake_tensorrt(cuda: FakeCuda, version: str = "10.3.0", fail_build: str | None = None) -> types.ModuleType:
    """A `tensorrt` module object; `fail_build` names a graph file whose build returns None."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    log: list[tuple] = []
    trt.calls = log

    class Logger:
        VERBOSE, INFO, WARNING, ERROR, INTERNAL_ERROR = 0, 1, 2, 3, 4

        def __init__(self, level: int = 2):
            self.level = level

    trt.Logger = Logger
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=_Enum("STRONGLY_TYPED", 1))
    trt.TensorIOMode = types.SimpleNamespace(INPUT=_Enum("INPUT", 1), OUTPUT=_Enum("OUTPUT", 2))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=_Enum("WORKSPACE", 0))
    dtypes = {name: _Enum(name, code) for name, code in (("FLOAT", 1), ("HALF", 10), ("INT64", 7), ("INT32", 6),
                                                         ("BOOL", 9))}
    trt.DataType = types.SimpleNamespace(**dtypes)
    by_code = {d.value: d for d in dtypes.values()}
    trt.nptype = lambda dt: _NP[dt.value]

    class Tensor:
        def __init__(self, name: str, shape: list[int], dtype: _Enum):
            self.name, self.shape, self.dtype = name, shape, dtype

    class Network:
        def __init__(self, flags: int):
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.source: str | None = None

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    def _tensors(values: Any) -> list[Tensor]:
        return [Tensor(v.name, [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
                       by_code[v.type.tensor_type.elem_type]) for v in values]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger):
            self.network = network
            self.errors: list[str] = []

        def parse_from_file(self, path: str) -> bool:
            import onnx

            log.append(("parse_from_file", path))
            try:
                model = onnx.load(path, load_external_data=False)
            except Exception as e:  # onnx raises DecodeError and others for a bad file
                self.errors.append(f"In node -1: cannot parse {path}: {e}")
                return False
            self.network.inputs = _tensors(model.graph.input)
            self.network.outputs = _tensors(model.graph.output)
            self.network.source = str(Path(path).resolve())
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = data
            self.builds = 0

        def serialize(self) -> bytes:
            return b"fake-timing-cache:" + str(self.builds).encode()

    class Config:
        def __init__(self):
            self.pools: dict[str, int] = {}
            self.builder_optimization_level = 3
            self.profiles: list[Profile] = []
            self.cache: TimingCache | None = None

        def set_memory_pool_limit(self, pool: _Enum, size: int) -> None:
            self.pools[pool.name] = size

        def create_timing_cache(self, data: bytes) -> TimingCache:
            log.append(("create_timing_cache", bytes(data)))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return cache.data != b"bad"

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger: Logger):
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            log.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            log.append(("build", network.source, [p.shapes for p in config.profiles], dict(config.pools),
                        config.builder_optimization_level, network.flags))
            if fail_build and network.source and network.source.endswith(fail_build):
                return None
            for p in config.profiles:
                for t in network.inputs:
                    assert t.name in p.shapes, f"profile lacks input {t.name}"
                    lo, opt, hi = p.shapes[t.name]
                    assert len(lo) == len(opt) == len(hi) == len(t.shape), f"rank mismatch for {t.name}"
                    for d, a, b, c in zip(t.shape, lo, opt, hi):
                        assert 0 <= a <= b <= c, f"{t.name}: min/opt/max out of order {lo} {opt} {hi}"
                        assert d == -1 or a == b == c == d, f"{t.name}: fixed dim {d} given range {a}..{c}"
            if config.cache is not None:
                config.cache.builds += 1
            return json.dumps({"version": version, "onnx": network.source,
                               "inputs": [(t.name, t.shape, t.dtype.value) for t in network.inputs],
                               "outputs": [(t.name, t.shape, t.dtype.value) for t in network.outputs],
                               "profiles": [{k: [list(x) for x in v] for k, v in p.shapes.items()}
                                            for p in config.profiles]}).encode()

    trt.OnnxParser, trt.Builder = OnnxParser, Builder

    sessions: dict[str, Any] = {}

    def session(path: str) -> Any:
        import onnxruntime as ort

        if path not in sessions:
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            sessions[path] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return sessions[path]

    class Engine:
        def __init__(self, spec: dict):
            self.spec = spec
            self.io = [(n, s, by_code[c], trt.TensorIOMode.INPUT) for n, s, c in spec["inputs"]] + \
                      [(n, s, by_code[c], trt.TensorIOMode.OUTPUT) for n, s, c in spec["outputs"]]
            self.contexts: list[Context] = []

        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.spec["profiles"])

        def get_tensor_name(self, i: int) -> str:
            return self.io[i][0]

        def _entry(self, name: str) -> tuple:
            return next(e for e in self.io if e[0] == name)

        def get_tensor_mode(self, name: str) -> _Enum:
            return self._entry(name)[3]

        def get_tensor_dtype(self, name: str) -> _Enum:
            return self._entry(name)[2]

        def get_tensor_profile_shape(self, name: str, profile: int) -> list:
            return [tuple(x) for x in self.spec["profiles"][profile][name]]

        def create_execution_context(self) -> "Context":
            c = Context(self)
            self.contexts.append(c)
            return c

    class Context:
        def __init__(self, engine: Engine):
            self.engine = engine
            self.profile = 0
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self.runs = 0
            self._out_shapes: dict[tuple, dict[str, tuple]] = {}

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            if not 0 <= index < self.engine.num_optimization_profiles:
                return False
            self.profile = index
            return True

        def set_input_shape(self, name: str, shape: Any) -> bool:
            lo, _, hi = self.engine.get_tensor_profile_shape(name, self.profile)
            shape = tuple(int(x) for x in shape)
            if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                return False
            self.shapes[name] = shape
            return True

        def _inputs(self) -> list[tuple]:
            return [e for e in self.engine.io if e[3] is trt.TensorIOMode.INPUT]

        def _outputs(self) -> list[tuple]:
            return [e for e in self.engine.io if e[3] is trt.TensorIOMode.OUTPUT]

        def get_tensor_shape(self, name: str) -> tuple:
            if self.engine.get_tensor_mode(name) is trt.TensorIOMode.INPUT:
                return self.shapes[name]
            key = tuple(self.shapes[n] for n, *_ in self._inputs())
            if key not in self._out_shapes:
                feeds = {n: np.zeros(self.shapes[n], dtype=_NP[c.value]) for n, _, c, _ in self._inputs()}
                outs = session(self.engine.spec["onnx"]).run([n for n, *_ in self._outputs()], feeds)
                self._out_shapes[key] = {n: o.shape for (n, *_), o in zip(self._outputs(), outs)}
            return self._out_shapes[key][name]

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream: int) -> bool:
            assert stream in cuda.streams, "execute on a stream that was not created"
            ranges = []
            feeds = {}
            for name, _, dt, _ in self._inputs():
                assert name in self.shapes, f"input shape of {name} not set"
                assert self.addresses.get(name), f"no address for input {name}"
                dtype = np.dtype(_NP[dt.value])
                feeds[name] = cuda.read(self.addresses[name], self.shapes[name], dtype)
                ranges.append((self.addresses[name], feeds[name].nbytes, name))
            names = [n for n, *_ in self._outputs()]
            outs = session(self.engine.spec["onnx"]).run(names, feeds)
            for (name, _, dt, _), value in zip(self._outputs(), outs):
                assert self.addresses.get(name), f"no address for output {name}"
                assert tuple(value.shape) == tuple(self.get_tensor_shape(name)), f"{name}: shape changed"
                start, n = self.addresses[name], value.nbytes
                for istart, inb, iname in ranges:
                    if n and inb and start < istart + inb and istart < start + n:
                        raise AssertionError(f"output {name} overlaps input {iname} in device memory")
                cuda.write(start, value.astype(_NP[dt.value]))
            self.runs += 1
            log.append(("execute_async_v3", self.engine.spec["onnx"], self.profile,
                        {k: v for k, v in self.shapes.items()}))
            return True

    class Runtime:
        def __init__(self, logger: Logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            try:
                spec = json.loads(bytes(data))
            except (ValueError, UnicodeDecodeError):
                return None
            return Engine(spec) if spec.get("version") == version else None

    trt.Runtime = Runtime
    return trt
