"""Quantize a bundle: ONNX Runtime weight-only int4 / int8 for CPUs; fp16 and Q/DQ graphs for TensorRT.

    python -m compile.quantize --bundle build/bundle --out build/bundle-int4 --precision int4

Precisions (the source must be a float32 bundle from compile.export):
- int4, method gguf (auto for smol-llava, whose language model is a Q4_1 GGUF): the GGUF's own blocks as
  MatMulNBits / GatherBlockQuantized, exact (compile.quantize.gguf); a folded bundle's factors go into the scales;
- int4, method rtn (auto for other models): decoder MatMuls -> MatMulNBits via ORT's quantizer (4-bit blocks of
  `block_size` along the input dimension, asymmetric, `accuracy_level` 4 = int8 activations inside the kernel),
  lm_head included unless --no-lm-head, the embedding table -> GatherBlockQuantized unless --no-embeddings;
- int8: decoder MatMuls -> MatMulNBits with 8-bit blocks (weight-only, the default), or quantize_dynamic
  per-channel with reduce_range (--int8-mode dynamic; the AVX2-without-VNNI caveat of FACTS.md);
- fp16: all three graphs in float16 (TensorRT / CUDA);
- int4-qdq: fp16 graphs, decoder weights as symmetric blockwise int4 DequantizeLinear -> MatMul (TensorRT's
  int4 weight-only form, the layout AWQ produces): the GGUF's own blocks for smol-llava (method gguf, plus a
  block-sum offsets MatMul), RTN scales otherwise;
- int8-qdq: int8 Q/DQ on decoder MatMul activations and weights (TensorRT explicit INT8), activation
  ranges calibrated on decoder inputs the source bundle computes itself.
Row scaling (the SGM fold) commutes with all of these weight quantizations: see compile.qfold.

The output is a bundle like its source (same tokenizer, runtime.json with dtype float16 for fp16 graphs)
whose manifest records `precision` (method, settings, per-graph sizes and node counts), `source` (the
float32 bundle's fingerprint) and `check` (teacher-forced agreement with the source, compile.quantize.check).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compile.quantize import ort_cpu, trt_graphs
from compile.quantize.derive import copy_graph, derive_bundle
from compile.quantize.graphs import graph_bytes, load_graph, save_graph
from runtime.bundle import GRAPHS, Bundle, load_bundle
from runtime.errors import UserError

TARGETS = {"int4": "onnxruntime-cpu", "int8": "onnxruntime-cpu", "fp16": "tensorrt", "int4-qdq": "tensorrt",
           "int8-qdq": "tensorrt"}
PRECISIONS = tuple(TARGETS)
INT8_MODES = ("weight-only", "dynamic")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute
METHODS = ("auto", "rtn", "gguf")
GGUF_PRECISIONS = ("int4", "int4-qdq")


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize and how; defaults are the measured choices (benchmarks/quant_table.py)."""

    precision: str
    block_size: int = 32
    accuracy_level: int = 4
    symmetric: bool = False
    lm_head: bool = True
    embeddings: bool = True
    int8_mode: str = "weight-only"
    calibration_items: int = 16
    skip_modules: tuple[str, ...] = ()  # int8-qdq: MatMuls whose node name contains one of these stay float
    keep_fp32: tuple[str, ...] = ()
    method: str = "auto"  # int4: "gguf" (exact GGUF blocks), "rtn" (ORT's quantizer); auto: gguf for smol-llava
    gguf: str | None = None  # the GGUF for method gguf (default: the embedded default's)

    def check(self) -> None:
        if self.precision not in TARGETS:
            raise UserError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UserError(f"block size must be a power of two >= 16, got {self.block_size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise UserError(f"accuracy level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        if self.int8_mode not in INT8_MODES:
            raise UserError(f"int8 mode must be one of {', '.join(INT8_MODES)}, got {self.int8_mode!r}")
        if self.calibration_items < 1:
            raise UserError("calibration needs at least one item")
        if self.method not in METHODS:
            raise UserError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "gguf" and self.precision not in GGUF_PRECISIONS:
            raise UserError("GGUF blocks convert exactly only to int4 or int4-qdq")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "keep_fp32": list(self.keep_fp32), "skip_modules": list(self.skip_modules)}


def _rewrite(src: Bundle, out: Path, graph: str, model: Any) -> dict[str, Any]:
    rel = src.spec.graphs[graph]
    external = save_graph(model, out / rel)
    return {"bytes_before": graph_bytes(src.root, rel), "bytes_after": graph_bytes(out, rel), "external_data": external}


def method_for(src: Bundle, spec: QuantSpec) -> str:
    """The int4 method: the embedded default (whose language model is a Q4_1 GGUF) converts its own blocks."""
    if spec.method != "auto":
        return spec.method
    return "gguf" if spec.precision in GGUF_PRECISIONS and src.manifest.get("model_type") == "smol-llava" else "rtn"


def _transform(spec: QuantSpec) -> Any:
    def run(src: Bundle, out: Path) -> dict[str, Any]:
        p = spec.precision
        if method_for(src, spec) == "gguf":
            from compile.quantize.gguf import GGUFWeights, convert, default_gguf

            return convert(src, out, GGUFWeights(spec.gguf or default_gguf()), spec.accuracy_level, spec.embeddings,
                           qdq=p == "int4-qdq")
        graphs: dict[str, Any] = {}
        decoder_path = src.graph_path("decoder")
        external = (src.root / (src.spec.graphs["decoder"] + ".data")).is_file()
        if p in ("int4", "int8") and not (p == "int8" and spec.int8_mode == "dynamic"):
            bits = 4 if p == "int4" else 8
            model, stats = ort_cpu.nbits(load_graph(decoder_path), bits, spec.block_size, spec.accuracy_level,
                                         spec.symmetric, spec.lm_head)
            graphs["decoder"] = {**stats, **_rewrite(src, out, "decoder", model)}
        elif p == "int8":
            rel = src.spec.graphs["decoder"]
            stats = ort_cpu.dynamic_int8(decoder_path, out / rel, spec.lm_head, external)
            graphs["decoder"] = {**stats, "bytes_before": graph_bytes(src.root, rel), "bytes_after": graph_bytes(out, rel)}
        elif p in ("fp16", "int4-qdq"):
            for graph in GRAPHS:
                model = trt_graphs.fp16(load_graph(src.graph_path(graph)), spec.keep_fp32)
                stats: dict[str, Any] = {"dtype": "float16"}
                if graph == "decoder" and p == "int4-qdq":
                    model, q = ort_cpu.nbits(model, 4, spec.block_size, None, True, spec.lm_head, qdq=True)
                    stats.update(q)
                graphs[graph] = {**stats, **_rewrite(src, out, graph, model)}
        elif p == "int8-qdq":
            from compile.quantize.calibration import calibration_items, decoder_feeds

            n_img = spec.calibration_items // 2
            feeds = decoder_feeds(src.root, calibration_items(n_img, spec.calibration_items - n_img))
            rel = src.spec.graphs["decoder"]
            stats = trt_graphs.static_int8(decoder_path, out / rel, feeds, spec.lm_head, external, spec.skip_modules)
            graphs["decoder"] = {**stats, "bytes_before": graph_bytes(src.root, rel), "bytes_after": graph_bytes(out, rel)}
        if p == "int4" and spec.embeddings:
            model, stats = ort_cpu.int4_embeddings(load_graph(src.graph_path("embed")), spec.block_size, spec.symmetric)
            graphs["embed"] = {**stats, **_rewrite(src, out, "embed", model)}
        for graph in GRAPHS:
            if graph not in graphs:
                copy_graph(src, graph, out)
                graphs[graph] = "unchanged"
        method = {"int4": "rtn", "int8": "rtn" if spec.int8_mode == "weight-only" else "dynamic", "fp16": "cast",
                  "int4-qdq": "rtn", "int8-qdq": "static"}[p]
        return {"precision": {"name": p, "target": TARGETS[p], **spec.to_dict(), "method": method, "graphs": graphs}}

    return run


def quantize_bundle(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, spec: QuantSpec,
                    overwrite: bool = False, check: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Write the `spec.precision` version of a float32 bundle to `out_dir`; returns its manifest.

    With `check`, the new bundle is compared with its source (teacher-forced, compile.quantize.check) and the
    result recorded in the manifest as `check`.
    """
    spec.check()
    src = load_bundle(bundle_dir)
    if src.precision != "fp32":
        raise UserError(f"{bundle_dir} is already a {src.precision} bundle; quantize the float32 bundle it came from "
                        f"({src.manifest.get('source', {}).get('path', 'see its manifest')})")
    if src.manifest.get("detoxified_in_graph"):
        raise UserError(f"{bundle_dir} was detoxified in its graph by compile.qfold; quantize its float32 source "
                        "and apply compile.qfold to the result (the fold commutes with quantization)")
    dtype = "float16" if spec.precision in ("fp16", "int4-qdq") else None

    def measure(tmp: Path) -> dict[str, Any]:
        from compile.quantize.check import agreement, check_items
        from runtime.generate import BundleGenerator

        # a TensorRT graph is evaluated as written: ORT's own fusions would turn its Q/DQ MatMuls into ORT's
        # integer kernels (int8 activations), which is not what TensorRT computes
        optimization = "disable" if TARGETS[spec.precision] == "tensorrt" else "all"
        new = BundleGenerator.open(tmp, threads=threads, optimization=optimization)
        result = agreement(BundleGenerator.open(src.root, threads=threads), new, check_items()).to_dict()
        return {**result, "evaluated_with": f"onnxruntime CPU, graph optimization {optimization}"}

    return derive_bundle(src.root, out_dir, _transform(spec), dtype=dtype, overwrite=overwrite,
                         after=measure if check else None)


__all__ = ["PRECISIONS", "QuantSpec", "TARGETS", "quantize_bundle"]
