"""ONNX Runtime backend: one InferenceSession per graph, execution providers chosen by the user.

Providers are given in priority order by short name (cpu, cuda, tensorrt) or ORT name; CPU is always the
last fallback for nodes a provider cannot take. A provider this onnxruntime build lacks, or one that fails
to start (ORT silently falls back to CPU), is an error rather than a quiet slowdown.

The decoder runs through IO binding: the present key/values it produces stay as ORT-owned OrtValues
(on the device of the first provider) and are bound as the next step's past without a copy to numpy.

The standard decoder computes logits at every position it is given. A prefill whose logits would pass
`max_logits_bytes` (a batch of long prompts over a large vocabulary: 8 jailbreak prompts of ~1,000 tokens over
gemma-llava's 262,144 tokens are 8.6 GB) runs in chunks of positions chained through the KV cache instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from runtime.backends.base import Backend, KVCache
from runtime.bundle import Bundle
from runtime.errors import UserError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_DEVICE = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
_OPT_LEVELS = ("disable", "basic", "extended", "all")
DECODERS = ("auto", "standard", "fused")
_EMBED_CACHE_ROWS = 8192  # token embeddings kept (about 19 MB at hidden 576 in float32)
DEFAULT_KV_CAPACITY = 256  # positions of a fused decoder's key/value buffer unless the caller says; grows on demand
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32}


@dataclass(frozen=True)
class OrtOptions:
    """Session settings: providers in priority order, threads, graph optimization, per-provider options."""

    providers: tuple[str, ...] = ("cpu",)
    threads: int | None = None  # intra-op threads; None: every core the process may use
    optimization: str = "all"
    provider_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    log_severity: int = 3
    io_binding: bool = True  # False: plain session.run with numpy in and out (for comparison and debugging)
    # which decoder graph generates: "standard" (the exported graph), "fused" (the bundle's fused_decoder, an
    # error when it has none), "auto" (fused when the bundle has one for the first provider, else standard)
    decoder: str = "auto"
    # a last-position prefill whose all-position logits would pass this many bytes runs in chunks of positions
    max_logits_bytes: int = 2 << 30

    def intra_op_threads(self) -> int:
        if self.threads is not None:
            if self.threads < 1:
                raise UserError(f"threads must be >= 1, got {self.threads}")
            return self.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise UserError("the runtime needs ONNX Runtime: pip install 'sgm-edge[cpu]' "
                        "(or 'sgm-edge[gpu]' for CUDA/TensorRT)") from e
    return onnxruntime


def resolve_providers(names: Sequence[str], provider_options: Mapping[str, Mapping[str, Any]] | None = None,
                      available: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """ORT (provider, options) pairs for user-given names, CPU appended; unknown or unavailable names are errors."""
    if not names:
        raise UserError("no execution provider given; choose from " + ", ".join(sorted(PROVIDERS)))
    if available is None:
        available = _import_ort().get_available_providers()
    provider_options = provider_options or {}
    out: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        ort_name = PROVIDERS.get(name.lower(), name if name in PROVIDERS.values() else None)
        if ort_name is None:
            ort_names = ", ".join(sorted(set(PROVIDERS.values())))
            raise UserError(f"unknown execution provider {name!r}; choose from "
                            f"{', '.join(sorted(PROVIDERS))} (or the ORT names {ort_names})")
        if ort_name not in available:
            hint = " (install onnxruntime-gpu instead of onnxruntime: pip install 'sgm-edge[gpu]')" \
                if ort_name in _DEVICE else ""
            raise UserError(f"execution provider {name!r} ({ort_name}) is not in this onnxruntime build; "
                            f"available: {', '.join(available)}{hint}")
        if ort_name not in (p for p, _ in out):
            short = next(k for k, v in PROVIDERS.items() if v == ort_name)
            opts = dict(provider_options.get(short, provider_options.get(ort_name, {})))
            out.append((ort_name, opts))
    if "CPUExecutionProvider" not in (p for p, _ in out):
        out.append(("CPUExecutionProvider", {}))
    return out


def tensorrt_defaults(bundle: Bundle) -> dict[str, str]:
    """TensorRT EP options unless the user sets them: an engine cache per bundle in the asset cache, because
    building engines takes minutes and the bundle directory may be read-only."""
    from runtime.assets import cache_dir

    path = cache_dir() / "tensorrt-ep" / bundle.fingerprint[:16]
    return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(path),
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(path)}


class _Binding(NamedTuple):
    """A fused decoder's IO binding kept from one step to the next: the shared key/value buffers it binds as
    past and present, the preallocated last-position logits it writes (None when their shape is not fixed), and
    the buffers' capacity in positions."""

    tensors: tuple[Any, ...]
    io: Any
    logits: np.ndarray | None
    capacity: int


class OrtBackend(Backend):
    """A bundle's three graphs in ONNX Runtime sessions."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, options: OrtOptions = OrtOptions()):
        ort = _import_ort()
        self.bundle = bundle
        self.options = options
        if options.optimization not in _OPT_LEVELS:
            raise UserError(f"graph optimization {options.optimization!r} is not one of {', '.join(_OPT_LEVELS)}")
        self._providers = resolve_providers(options.providers, options.provider_options)
        for name, opts in self._providers:
            if name == "TensorrtExecutionProvider":
                for key, value in tensorrt_defaults(bundle).items():
                    opts.setdefault(key, value)
                Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        primary = self._providers[0][0]
        self.device = _DEVICE.get(primary, "cpu")
        self.device_id = int(self._providers[0][1].get("device_id", 0))
        spec = bundle.spec
        self.fused = self._use_fused(spec)
        self._ort = ort
        # with the fused decoder, the standard one is only opened when all-position logits are asked for (nll)
        graphs = [g for g in spec.graphs if not (self.fused and g == "decoder")]
        self._sessions = {g: self._session(ort, bundle.graph_path(g), g) for g in graphs}
        self._past = spec.decoder.past_names(spec.num_layers)
        self._present = spec.decoder.present_names(spec.num_layers)
        if self.fused:
            f = spec.fused_decoder
            self._sessions["fused_decoder"] = self._session(ort, bundle.graph_path("fused_decoder"), "fused decoder")
            self._fused_past = f.past_names(spec.num_layers)
            self._fused_present = f.present_names(spec.num_layers)
        self._check_io()
        dec, embeds_name, past0 = (self._sessions["fused_decoder"], spec.fused_decoder.inputs_embeds,
                                   self._fused_past[0]) if self.fused else \
            (self._sessions["decoder"], spec.decoder.inputs_embeds, self._past[0])
        types = {i.name: i.type for i in dec.get_inputs()}
        self._embeds_dtype = _NUMPY.get(types[embeds_name], np.float32)
        self._kv_dtype = _NUMPY.get(types[past0], np.float32)
        # a fused decoder derives positions from the attention mask: a left-padded batch would be misread
        self.left_padding = not self.fused
        self._bound: _Binding | None = None  # the shared key/value buffers' binding, kept across steps
        self._fused_logits_row = self._last_logits_row() if self.fused else None
        self._embed_rows: dict[int, np.ndarray] = {}
        self._vision_dtype = _NUMPY.get({i.name: i.type for i in self._sessions["vision"].get_inputs()}
                                        [spec.vision.input], np.float32)

    def _last_logits_row(self) -> tuple[Any, int] | None:
        """(dtype, vocab) when the fused decoder's logits are [batch, 1, vocab] with a fixed vocab: such logits
        can be written into a buffer allocated once per generation instead of a fresh output every step."""
        out = {o.name: o for o in self._sessions["fused_decoder"].get_outputs()}[self.bundle.spec.fused_decoder.logits]
        shape = out.shape
        if len(shape) == 3 and shape[1] == 1 and isinstance(shape[2], int) and out.type in _NUMPY:
            return _NUMPY[out.type], shape[2]
        return None

    def _use_fused(self, spec: Any) -> bool:
        choice = self.options.decoder
        if choice not in DECODERS:
            raise UserError(f"decoder {choice!r} is not one of {', '.join(DECODERS)}")
        f = spec.fused_decoder
        if choice == "standard":
            return False
        fits = f is not None and self._providers[0][0] in {PROVIDERS.get(p, p) for p in f.providers}
        if choice == "fused" and not fits:
            raise UserError("the bundle has no fused decoder (build one with `python -m compile.fused`)" if f is None
                            else f"the bundle's fused decoder is built for {', '.join(f.providers)}, not "
                                 f"{self._providers[0][0]}; use --decoder standard")
        return fits

    def _standard_decoder(self) -> Any:
        if "decoder" not in self._sessions:
            self._sessions["decoder"] = self._session(self._ort, self.bundle.graph_path("decoder"), "decoder")
        return self._sessions["decoder"]

    def _session(self, ort: Any, path: Path, graph: str) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = self.options.log_severity
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.options.optimization]
        names = [p for p, _ in self._providers]
        try:
            session = ort.InferenceSession(str(path), so, providers=names,
                                           provider_options=[o for _, o in self._providers])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types; all mean a bad graph here
            raise UserError(f"ONNX Runtime cannot load the {graph} graph {path} ({type(e).__name__}: {e}); "
                            "rebuild the bundle") from e
        if names[0] not in session.get_providers():
            raise UserError(f"ONNX Runtime could not start {names[0]} for the {graph} graph (it fell back to "
                            f"{', '.join(session.get_providers())}); check the CUDA/cuDNN/TensorRT libraries "
                            "this onnxruntime build needs, or choose --provider cpu")
        return session

    def _check_io(self) -> None:
        spec = self.bundle.spec
        d = spec.decoder
        wanted = {
            "vision": ([spec.vision.input], [spec.vision.output]),
            "embed": ([spec.embed.input], [spec.embed.output]),
            "decoder": ([d.inputs_embeds, d.attention_mask, d.position_ids, *self._past], [d.logits, *self._present]),
        }
        if self.fused:
            f = spec.fused_decoder
            wanted["fused_decoder"] = ([f.inputs_embeds, f.attention_mask, *self._fused_past],
                                       [f.logits, *self._fused_present])
        for graph, (inputs, outputs) in wanted.items():
            if graph not in self._sessions:
                continue
            s = self._sessions[graph]
            have_in = {i.name for i in s.get_inputs()}
            have_out = {o.name for o in s.get_outputs()}
            missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
            extra = sorted(have_in - set(inputs))
            problems = []
            if missing:
                problems.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
            if extra:
                problems.append(f"unexpected inputs {', '.join(extra[:4])}")
            if problems:
                raise UserError(f"the {graph} graph does not match runtime.json: {'; '.join(problems)}; "
                                "rebuild the bundle")

    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        io = self.bundle.spec.vision
        x = np.ascontiguousarray(pixel_values, dtype=self._vision_dtype)
        return self._sessions["vision"].run([io.output], {io.input: x})[0]

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """Token embeddings; rows already seen come from a cache (the embed graph is a pure per-token lookup), so a
        decode step usually skips a session run."""
        io = self.bundle.spec.embed
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.shape[1] == 1:
            rows = [self._embed_rows.get(int(t)) for t in ids[:, 0]]
            if all(r is not None for r in rows):
                return rows[0][None, None] if len(rows) == 1 else np.stack(rows)[:, None]
        out = self._sessions["embed"].run([io.output], {io.input: ids})[0]
        if out.ndim == 3 and out.shape[:2] == ids.shape and len(self._embed_rows) < _EMBED_CACHE_ROWS:
            for t, row in zip(ids.reshape(-1).tolist(), out.reshape(-1, out.shape[-1])):
                if t not in self._embed_rows:
                    row = row.copy()
                    row.flags.writeable = False  # handed out as views: nobody may change the cache through one
                    self._embed_rows[t] = row
        return out

    def empty_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        from onnxruntime import OrtValue

        spec = self.bundle.spec
        if self.fused and spec.fused_decoder.kv_buffer == "shared":
            # one buffer per layer and kind, owned by ORT (ortvalue_from_numpy would alias a single numpy array on
            # CPU); positions past the cache length are never read, so they need no zeroing
            shape = [batch, spec.num_kv_heads, capacity or DEFAULT_KV_CAPACITY, spec.head_dim]
            tensors = tuple(OrtValue.ortvalue_from_shape_and_type(shape, self._kv_dtype, self.device, self.device_id)
                            for _ in self._fused_past)
            return KVCache(batch=batch, length=0, tensors=tensors)
        empty = np.zeros((batch, spec.num_kv_heads, 0, spec.head_dim), dtype=self._kv_dtype)
        if not self.options.io_binding:
            return KVCache(batch=batch, length=0, tensors=(empty,) * len(self._past))
        tensors = tuple(OrtValue.ortvalue_from_numpy(empty, self.device, self.device_id) for _ in self._past)
        return KVCache(batch=batch, length=0, tensors=tensors)

    def decode(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
               cache: KVCache, last_only: bool = True) -> tuple[np.ndarray, KVCache]:
        d = self.bundle.spec.decoder
        b, s = inputs_embeds.shape[:2]
        if attention_mask.shape != (b, cache.length + s) or position_ids.shape != (b, s) or cache.batch != b:
            raise ValueError(f"decoder inputs do not line up: embeds {inputs_embeds.shape}, "
                             f"mask {attention_mask.shape}, positions {position_ids.shape}, "
                             f"cache {cache.batch}x{cache.length}")
        if last_only and not self.fused and s > 1:
            chunk = self.prefill_chunk(b)
            if s > chunk:
                return self._decode_chunked(inputs_embeds, attention_mask, position_ids, cache, chunk)
        if self.fused:
            if last_only or self.bundle.spec.fused_decoder.logits_positions == "all":
                return self._decode_fused(inputs_embeds, attention_mask, cache, last_only)
            if cache.length:
                raise ValueError("all-position logits come from the standard decoder, which starts from an empty "
                                 "cache only (teacher-forced scoring); open the bundle with decoder='standard'")
            return self._decode_standard(inputs_embeds, attention_mask, position_ids)
        feed = {d.inputs_embeds: np.ascontiguousarray(inputs_embeds, dtype=self._embeds_dtype),
                d.attention_mask: np.ascontiguousarray(attention_mask, dtype=np.int64),
                d.position_ids: np.ascontiguousarray(position_ids, dtype=np.int64)}
        if self.options.io_binding:
            logits, *present = self._run_bound(feed, cache)
        else:
            feed.update(zip(self._past, cache.tensors))
            logits, *present = self._sessions["decoder"].run([d.logits, *self._present], feed)
        logits = logits[:, -1] if last_only else logits
        return logits.astype(np.float32, copy=False), KVCache(b, cache.length + s, tuple(present))

    def prefill_chunk(self, batch: int) -> int:
        """Positions per standard-decoder run for a last-position prefill of `batch` sequences: as many as keep
        the run's all-position float32 logits within `max_logits_bytes` (at least one)."""
        if self.options.max_logits_bytes < 1:
            raise UserError(f"max_logits_bytes must be >= 1, got {self.options.max_logits_bytes}")
        return max(1, self.options.max_logits_bytes // (batch * self.bundle.spec.vocab_size * 4))

    def _decode_chunked(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
                        cache: KVCache, chunk: int) -> tuple[np.ndarray, KVCache]:
        """A last-position prefill as runs of `chunk` positions, each continuing the previous one's cache."""
        past = cache.length
        for start in range(0, inputs_embeds.shape[1], chunk):
            end = min(start + chunk, inputs_embeds.shape[1])
            logits, cache = self.decode(inputs_embeds[:, start:end], attention_mask[:, :past + end],
                                        position_ids[:, start:end], cache)
        return logits, cache

    def _decode_standard(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray,
                         position_ids: np.ndarray) -> tuple[np.ndarray, KVCache]:
        """All-position logits of a prompt from the standard decoder (empty past); the cache it returns holds
        no tensors, so it cannot be continued by the fused decoder by mistake."""
        d, spec = self.bundle.spec.decoder, self.bundle.spec
        session = self._standard_decoder()
        types = {i.name: i.type for i in session.get_inputs()}
        b, s = inputs_embeds.shape[:2]
        empty = np.zeros((b, spec.num_kv_heads, 0, spec.head_dim), _NUMPY.get(types[self._past[0]], np.float32))
        feed = {d.inputs_embeds: np.ascontiguousarray(inputs_embeds, dtype=_NUMPY.get(types[d.inputs_embeds])),
                d.attention_mask: np.ascontiguousarray(attention_mask, dtype=np.int64),
                d.position_ids: np.ascontiguousarray(position_ids, dtype=np.int64), **{n: empty for n in self._past}}
        logits = session.run([d.logits], feed)[0]
        return logits.astype(np.float32, copy=False), KVCache(b, s, ())

    def _decode_fused(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, cache: KVCache,
                      last_only: bool) -> tuple[np.ndarray, KVCache]:
        """One run of the fused decoder; with a shared buffer, past and present are the same OrtValue per layer,
        written in place at positions [cache.length, cache.length + s) (grown first when too small)."""
        f = self.bundle.spec.fused_decoder
        b, s = inputs_embeds.shape[:2]
        if len(cache.tensors) != len(self._fused_past):
            raise ValueError("this cache was not made by the fused decoder (use backend.empty_cache)")
        session = self._sessions["fused_decoder"]
        tensors = cache.tensors
        shared = f.kv_buffer == "shared"
        if shared and cache.length + s > tensors[0].shape()[2]:
            tensors = self._grow(tensors, cache.length + s)
        # with a shared buffer the binding is kept from one step to the next (the buffers do not move) and only the
        # embeddings and the mask are rebound; last-position logits go to a buffer bound once, so a step reads no
        # outputs back (io.get_outputs() would wrap every layer's key/value buffer in a new Python object)
        if not shared or self._bound is None or self._bound.tensors is not tensors:
            io = session.io_binding()
            row = self._fused_logits_row if shared else None
            logits_buffer = None
            if row is not None:
                logits_buffer = np.empty((b, 1, row[1]), dtype=row[0])
                io.bind_output(f.logits, "cpu", 0, row[0], list(logits_buffer.shape), logits_buffer.ctypes.data)
            else:
                io.bind_output(f.logits, "cpu")
            if shared:
                for past, present, value in zip(self._fused_past, self._fused_present, tensors):
                    io.bind_ortvalue_input(past, value)
                    io.bind_ortvalue_output(present, value)
                self._bound = _Binding(tensors, io, logits_buffer, tensors[0].shape()[2])
            else:
                for name, value in zip(self._fused_past, tensors):
                    io.bind_ortvalue_input(name, value)
                for name in self._fused_present:
                    io.bind_output(name, self.device, self.device_id)
        else:
            io, logits_buffer = self._bound.io, self._bound.logits
        io.bind_cpu_input(f.inputs_embeds, np.ascontiguousarray(inputs_embeds, dtype=self._embeds_dtype))
        io.bind_cpu_input(f.attention_mask, np.ascontiguousarray(attention_mask, dtype=np.int64))
        session.run_with_iobinding(io)
        if logits_buffer is not None:  # only ever bound with a shared buffer
            return self._last_logits(logits_buffer), KVCache(b, cache.length + s, tensors)
        outputs = io.get_outputs()
        logits = outputs[0].numpy()
        if not shared:
            tensors = tuple(outputs[1:])
        logits = logits[:, -1] if last_only else logits
        return logits.astype(np.float32, copy=False), KVCache(b, cache.length + s, tuple(tensors))

    def token_stepper(self, cache: KVCache,
                      attention_mask: np.ndarray) -> Callable[[Sequence[int]], np.ndarray] | None:
        """The fused decoder's steady state as one closure: the binding, the shared key/value buffers and the
        logits buffer stay put, so a step is an embedding-row lookup, two input binds and the run (about 0.1 ms
        of Python less a step than embed + decode, measured on smol-llava's int4 bundle). None unless the
        prefill bound a shared buffer with room for the whole mask."""
        bound = self._bound
        mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if (bound is None or bound.tensors is not cache.tensors or bound.logits is None
                or mask.shape[1] > bound.capacity or mask.shape[0] != cache.batch or cache.length >= mask.shape[1]):
            return None
        f = self.bundle.spec.fused_decoder
        session, io, rows, dtype = self._sessions["fused_decoder"], bound.io, self._embed_rows, self._embeds_dtype
        logits = self._last_logits(bound.logits)
        capacity, length = mask.shape[1], cache.length

        def step(token_ids: Sequence[int]) -> np.ndarray:
            nonlocal length
            if length >= capacity:
                raise ValueError(f"the attention mask has room for {capacity} positions; this step would be the "
                                 f"{length + 1}th")
            row = rows.get(token_ids[0]) if len(token_ids) == 1 else None
            x = row[None, None] if row is not None else self.embed(np.asarray(token_ids, dtype=np.int64)[:, None])
            length += 1
            io.bind_cpu_input(f.inputs_embeds, x if x.dtype == dtype else x.astype(dtype))
            io.bind_cpu_input(f.attention_mask, mask[:, :length])
            session.run_with_iobinding(io)
            return logits

        return step

    @staticmethod
    def _last_logits(buffer: np.ndarray) -> np.ndarray:
        """Float32 logits [b, V] from a bound [b, 1, V] buffer: a view of it when it is float32, which the next
        step overwrites (the Backend contract), so a step allocates and copies nothing (an astype copy of the
        vocabulary's logits cost ~0.1 ms a step, 1-2% of an int4 step)."""
        logits = buffer[:, -1]
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)

    def _grow(self, tensors: tuple[Any, ...], needed: int) -> tuple[Any, ...]:
        from onnxruntime import OrtValue

        out = []
        for t in tensors:
            old = t.numpy()
            cap = max(needed, 2 * old.shape[2])
            new = np.zeros(old.shape[:2] + (cap,) + old.shape[3:], old.dtype)
            new[:, :, :old.shape[2]] = old
            out.append(OrtValue.ortvalue_from_numpy(new, self.device, self.device_id))
        return tuple(out)

    def _run_bound(self, feed: dict[str, np.ndarray], cache: KVCache) -> list[Any]:
        """The decoder through IO binding: logits as numpy, present key/values as OrtValues left in place."""
        session = self._sessions["decoder"]
        io = session.io_binding()
        for name, value in feed.items():
            io.bind_cpu_input(name, value)
        for name, value in zip(self._past, cache.tensors):
            io.bind_ortvalue_input(name, value)
        io.bind_output(self.bundle.spec.decoder.logits, "cpu")
        for name in self._present:
            io.bind_output(name, self.device, self.device_id)
        session.run_with_iobinding(io)
        outputs = io.get_outputs()
        return [outputs[0].numpy(), *outputs[1:]]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "providers": [p for p, _ in self._providers], "device": self.device,
                "intra_op_threads": self.options.intra_op_threads(), "optimization": self.options.optimization,
                "io_binding": self.options.io_binding, "decoder": "fused" if self.fused else "standard"}
