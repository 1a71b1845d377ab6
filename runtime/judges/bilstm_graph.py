"""Keras' embedding -> bidirectional LSTM -> max-pool -> dense classifier, written as one ONNX graph.

Used once, when the Jigsaw judge is converted into the asset cache (needs the onnx package). The graph
reproduces Keras exactly: no masking (the LSTM runs over every padded position, as the unmasked Keras
model did), Keras' single LSTM bias as ONNX's input bias with a zero recurrent bias, and Keras' gate
order (input, forget, cell, output) permuted to ONNX's (input, output, forget, cell).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from runtime.judges.onnx_io import import_onnx

INPUT = "ids"
OUTPUT = "probabilities"
OPSET = 18
TENSORS = ("embedding", "forward.kernel", "forward.recurrent", "forward.bias", "backward.kernel",
           "backward.recurrent", "backward.bias", "hidden.kernel", "hidden.bias", "output.kernel", "output.bias")


def _onnx_gates(keras: np.ndarray) -> np.ndarray:
    """Reorder the last axis from Keras' gate blocks (i, f, c, o) to ONNX's (i, o, f, c)."""
    i, f, c, o = np.split(keras, 4, axis=-1)
    return np.concatenate([i, o, f, c], axis=-1)


def build(tensors: dict[str, np.ndarray], maxlen: int) -> Any:
    """ONNX ModelProto: int64 ids [B, maxlen] -> sigmoid label probabilities [B, labels]."""
    onnx = import_onnx("building the BiLSTM judge's ONNX graph")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    missing = [k for k in TENSORS if k not in tensors]
    if missing:
        raise ValueError(f"BiLSTM weights lack {missing}")
    hidden = tensors["forward.recurrent"].shape[0]
    labels = tensors["output.bias"].shape[0]
    dirs = ("forward", "backward")
    weights = {
        "embedding": tensors["embedding"],
        "W": np.stack([_onnx_gates(tensors[f"{d}.kernel"]).T for d in dirs]),
        "R": np.stack([_onnx_gates(tensors[f"{d}.recurrent"]).T for d in dirs]),
        "B": np.stack([np.concatenate([_onnx_gates(tensors[f"{d}.bias"]), np.zeros(4 * hidden, np.float32)])
                       for d in dirs]),
        "hidden.kernel": tensors["hidden.kernel"], "hidden.bias": tensors["hidden.bias"],
        "output.kernel": tensors["output.kernel"], "output.bias": tensors["output.bias"],
        "time_axis": np.array([0], dtype=np.int64),
        "pooled_shape": np.array([-1, 2 * hidden], dtype=np.int64),
    }
    initializers = [numpy_helper.from_array(np.ascontiguousarray(v), name) for name, v in weights.items()]
    node = helper.make_node
    nodes = [
        node("Gather", ["embedding", INPUT], ["x"]),                       # [B, T, E]
        node("Transpose", ["x"], ["x_tbe"], perm=[1, 0, 2]),                # [T, B, E]
        node("LSTM", ["x_tbe", "W", "R", "B"], ["states"], direction="bidirectional", hidden_size=hidden),
        node("ReduceMax", ["states", "time_axis"], ["max_dbh"], keepdims=0),  # [2, B, H]
        node("Transpose", ["max_dbh"], ["max_bdh"], perm=[1, 0, 2]),        # [B, 2, H]: forward then backward
        node("Reshape", ["max_bdh", "pooled_shape"], ["pooled"]),           # [B, 2H]
        node("MatMul", ["pooled", "hidden.kernel"], ["h_mm"]),
        node("Add", ["h_mm", "hidden.bias"], ["h_pre"]),
        node("Relu", ["h_pre"], ["h"]),
        node("MatMul", ["h", "output.kernel"], ["o_mm"]),
        node("Add", ["o_mm", "output.bias"], ["logits"]),
        node("Sigmoid", ["logits"], [OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes, "keras_bilstm_classifier",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.INT64, ["batch", maxlen])],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["batch", labels])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sgm-edge")
    onnx.checker.check_model(model)
    return model
