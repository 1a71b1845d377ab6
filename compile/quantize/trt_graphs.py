"""Graphs for TensorRT's strongly typed networks: the precision is in the graph, not in builder flags.

- `fp16(model)`: weights and activations in float16 (ORT's float16 converter); `keep_fp32` names op types
  left in float32 behind Casts (e.g. the RMSNorm reductions when activations overflow float16);
- int4 (AWQ-style weight-only): fp16 graph + symmetric blockwise int4 DequantizeLinear before each MatMul
  (TensorRT takes int4 as weight-only, symmetric, zero points absent) - `compile.quantize.ort_cpu.nbits(..., qdq=True)`;
- `static_int8(src, out, reader)`: int8 Q/DQ on MatMul inputs and weights (TensorRT's explicit INT8: symmetric,
  per-tensor activations calibrated on real decoder inputs, per-channel weights), via quantize_static.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np
import onnx

from compile.quantize.graphs import is_lm_head


def fp16(model: onnx.ModelProto, keep_fp32: Sequence[str] = ()) -> onnx.ModelProto:
    """The graph in float16, inputs and outputs included (float constants clamped to float16's range)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=False, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(keep_fp32))


class FeedReader:
    """onnxruntime.quantization.CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def static_int8(src: str | os.PathLike, out: str | os.PathLike, feeds: Sequence[dict[str, np.ndarray]],
                lm_head: bool, external_data: bool, skip: Sequence[str] = ()) -> dict[str, Any]:
    """int8 Q/DQ (W8A8, symmetric) on every MatMul with a constant weight whose name contains none of `skip`,
    activation ranges from min/max over `feeds` (ORT's histogram calibrators need equal-shaped feeds)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    targets = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
               and (lm_head or not is_lm_head(n.name)) and not any(part in n.name for part in skip)]
    quantize_static(str(src), str(out), FeedReader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_quantize=targets,
                    op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax,
                    use_external_data_format=external_data,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    done = onnx.load(str(out), load_external_data=False)
    return {"op": "QuantizeLinear/DequantizeLinear int8", "calibration": {"method": "minmax", "samples": len(feeds)},
            "quantized_matmuls": len(targets),
            "q_nodes": sum(1 for n in done.graph.node if n.op_type == "QuantizeLinear"),
            "kept_float": ([] if lm_head else ["lm_head"]) + list(skip)}
