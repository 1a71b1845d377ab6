"""ONNX Runtime weight-only quantization for CPUs, through ORT's own quantizers.

- `nbits(model, bits, ...)`: every MatMul with a constant weight becomes MatMulNBits (blockwise along the
  input dimension, one scale and zero point per block and output channel), lm_head optionally kept;
- `int4_embeddings(model, ...)`: the token-embedding Gather becomes GatherBlockQuantized (int4, blocks
  along the hidden dimension);
- `dynamic_int8(src, out, ...)`: quantize_dynamic (per-channel int8 weights, activations quantized at run
  time). On AVX2 CPUs without VNNI the u8s8 kernels saturate unless `reduce_range` keeps weights to 7 bits
  (FACTS.md: per-channel without reduce_range gives garbage there), so it is always on here.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import onnx
from onnx import version_converter

from compile.quantize.graphs import is_lm_head, weight_matmuls

QDQ_OPSET = 21  # blockwise DequantizeLinear and int4 tensors need opset 21


def _quiet() -> None:
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)


def upgrade_opset(model: onnx.ModelProto, opset: int = QDQ_OPSET) -> onnx.ModelProto:
    """The model converted to `opset` (ORT's quantizers only relabel the opset, leaving e.g. ReduceMean's
    `axes` attribute invalid)."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    return model if version >= opset else version_converter.convert_version(model, opset)


def nbits(model: onnx.ModelProto, bits: int, block_size: int, accuracy_level: int | None, symmetric: bool,
          lm_head: bool, qdq: bool = False) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """MatMul weights to `bits`-bit blocks (MatMulNBits, or DequantizeLinear + MatMul with `qdq`)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    _quiet()
    targets = weight_matmuls(model)
    excluded = [n.name for n in targets if is_lm_head(n.name) and not lm_head]
    if qdq:
        model = upgrade_opset(model)
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                          accuracy_level=accuracy_level or None,
                                          quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                                          op_types_to_quantize=("MatMul",), bits=bits)
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=excluded, algo_config=config)
    quantizer.process()
    out = quantizer.model.model
    op = "DequantizeLinear" if qdq else "MatMulNBits"
    done = sum(1 for n in out.graph.node if n.op_type == op)
    return out, {"op": op, "quantized": done, "candidates": len(targets), "kept_float": excluded}


def int4_embeddings(model: onnx.ModelProto, block_size: int, symmetric: bool) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The embedding table's Gather as GatherBlockQuantized (int4 blocks along the hidden dimension)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    _quiet()
    model = upgrade_opset(model)
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                          quant_format=QuantFormat.QOperator, op_types_to_quantize=("Gather",),
                                          quant_axes=(("Gather", 1),), bits=4)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    out = quantizer.model.model
    return out, {"op": "GatherBlockQuantized",
                 "quantized": sum(1 for n in out.graph.node if n.op_type == "GatherBlockQuantized")}


def dynamic_int8(src: str | os.PathLike, out: str | os.PathLike, lm_head: bool, external_data: bool) -> dict[str, Any]:
    """quantize_dynamic on MatMul: per-channel int8 weights with reduce_range (the AVX2 caveat)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src), load_external_data=False)
    excluded = [n.name for n in weight_matmuls(model) if is_lm_head(n.name) and not lm_head]
    quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], per_channel=True, reduce_range=True,
                     weight_type=QuantType.QInt8, nodes_to_exclude=excluded, use_external_data_format=external_data)
    done = onnx.load(str(out), load_external_data=False)
    return {"op": "MatMulInteger (dynamic)", "per_channel": True, "reduce_range": True,
            "quantized": sum(1 for n in done.graph.node if n.op_type == "MatMulInteger"), "kept_float": excluded}
