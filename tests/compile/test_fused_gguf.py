"""compile.fused's GGUF conversion of a builder-shaped graph: the GGUF's blocks exactly, SGM factors folded in.

The builder's node names (fused qkv_proj, gate/up/down, lm_head) over the synthetic Q4_1 GGUF of
tests/compile/test_gguf_nbits.py; runs without onnxruntime-genai (no builder is needed to convert a graph).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compile.quantize import gguf as g
from compile.fused import convert_to_gguf

_spec = importlib.util.spec_from_file_location("gguf_fixtures", Path(__file__).with_name("test_gguf_nbits.py"))
fx = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fx
_spec.loader.exec_module(fx)

LAYER = "/model/layers.0/"


def builder_graph(hf: dict[str, np.ndarray], scales: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """x -> qkv (q, k, v stacked), o, gate, up, down -> lm_head, named as onnxruntime-genai's builder names them;
    `scales` multiply a module's output rows (the SGM fold) in the float weights."""
    scales = scales or {}
    w = {m: hf[m] * scales[f"layers.0.{m}"][:, None] if f"layers.0.{m}" in scales else hf[m] for m in fx.LINEARS}
    weights = {"attn/qkv_proj": np.concatenate([w["self_attn/q_proj"], w["self_attn/k_proj"], w["self_attn/v_proj"]]),
               "attn/o_proj": w["self_attn/o_proj"], "mlp/gate_proj": w["mlp/gate_proj"],
               "mlp/up_proj": w["mlp/up_proj"], "mlp/down_proj": w["mlp/down_proj"]}

    def mm(module: str, a: str, out: str) -> onnx.NodeProto:
        return helper.make_node("MatMul", [a, module.replace("/", "_")], [out], name=f"{LAYER}{module}/MatMul")

    q = fx.H
    nodes = [mm("attn/qkv_proj", "x", "qkv"),
             helper.make_node("Slice", ["qkv", "zero", "q_end", "last"], ["q"]),
             mm("attn/o_proj", "q", "o"), mm("mlp/gate_proj", "x", "gate"),
             helper.make_node("Sigmoid", ["gate"], ["gate_act"]),  # a consumer of gate before up's MatMul
             mm("mlp/up_proj", "x", "up"),
             helper.make_node("Mul", ["gate_act", "up"], ["act"]), mm("mlp/down_proj", "act", "down"),
             helper.make_node("Add", ["o", "down"], ["h"]),
             helper.make_node("MatMul", ["h", "lm_head"], ["logits"], name="/lm_head/MatMul")]
    inits = [numpy_helper.from_array(np.ascontiguousarray(v.T), k.replace("/", "_")) for k, v in weights.items()]
    inits += [numpy_helper.from_array(np.ascontiguousarray(hf["embed"].T), "lm_head"),
              numpy_helper.from_array(np.array([0], np.int64), "zero"),
              numpy_helper.from_array(np.array([q], np.int64), "q_end"),
              numpy_helper.from_array(np.array([-1], np.int64), "last")]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", f, [1, 3, fx.H])],
                              [helper.make_tensor_value_info(n, f, None) for n in ("logits", "qkv")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("folded", [False, True])
def test_builder_graph_converts_exactly(tmp_path: Path, folded: bool):
    hf = fx.write_gguf(tmp_path / "model.gguf", seed=0)
    weights = g.GGUFWeights(tmp_path / "model.gguf")
    rng = np.random.default_rng(5)
    scales = {f"layers.0.{m}": rng.uniform(0.2, 1.0, fx.LINEARS[m][1]).astype(np.float32)
              for m in ("mlp/gate_proj", "mlp/up_proj")} if folded else None
    x = np.random.default_rng(1).standard_normal((1, 3, fx.H)).astype(np.float32)
    want = fx.run(builder_graph(hf, scales), {"x": x})
    model = builder_graph(hf, scales)
    row_scales = {k.replace("/", "."): v for k, v in scales.items()} if scales else None
    stats = convert_to_gguf(model, weights, row_scales, accuracy_level=1)
    assert stats["converted"] == {"Q4": 5, "Q8": 1} and stats["method"] == "gguf-exact"
    assert stats["max_abs_diff_vs_float32"] < 1e-6 and stats["folded_modules"] == (2 if folded else 0)
    ops = [n.op_type for n in model.graph.node]
    # qkv, o, gate, up, down, lm_head; block sums shared per activation (x, q, act)
    assert ops.count("MatMulNBits") == 6 and ops.count("ReduceSum") == 3
    float_weights = {"attn_qkv_proj", "attn_o_proj", "mlp_gate_proj", "mlp_up_proj", "mlp_down_proj", "lm_head"}
    assert float_weights.isdisjoint(t.name for t in model.graph.initializer)
    for got, ref in zip(fx.run(model, {"x": x}), want):  # float32 compute (accuracy level 1): exact weights
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_wrong_scales_are_refused(tmp_path: Path):
    """A fold the float weights do not carry fails the per-weight check before anything is written."""
    hf = fx.write_gguf(tmp_path / "model.gguf", seed=0)
    weights = g.GGUFWeights(tmp_path / "model.gguf")
    scales = {"layers.0.mlp.up_proj": np.full(fx.LINEARS["mlp/up_proj"][1], 0.5, np.float32)}
    with pytest.raises(Exception, match="up_proj"):
        convert_to_gguf(builder_graph(hf), weights, scales, accuracy_level=1)


class _EightBitV:
    """The synthetic GGUF with attn_v's Q4_1 blocks written as 8-bit codes (+ offsets): the same weights in a form
    that cannot be stacked with q and k's 4-bit blocks (what a mixed gptq bundle's exact modules give)."""

    def __init__(self, weights: g.GGUFWeights):
        self.weights = weights

    def blocks(self, name: str) -> g.Blocks:
        b = self.weights.blocks(name)
        return g.Blocks(b.codes, b.scales, b.offsets, 8) if name.endswith("attn_v.weight") else b


def test_q_k_v_quantized_differently_are_converted_apart(tmp_path: Path):
    """q and k 4-bit, v 8-bit: three MatMulNBits and a Concat in place of the packed qkv MatMul, still exactly the
    float weights."""
    hf = fx.write_gguf(tmp_path / "model.gguf", seed=0)
    x = np.random.default_rng(1).standard_normal((1, 3, fx.H)).astype(np.float32)
    want = fx.run(builder_graph(hf), {"x": x})
    model = builder_graph(hf)
    stats = convert_to_gguf(model, _EightBitV(g.GGUFWeights(tmp_path / "model.gguf")), None, accuracy_level=1)
    assert stats["converted"] == {"qkv apart (Q4 / Q4 / Q8)": 1, "Q4": 4, "Q8": 1}
    assert stats["max_abs_diff_vs_float32"] < 1e-6
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 8 and ops.count("Concat") == 1
    bits = {n.name: dict((a.name, a.i) for a in n.attribute)["bits"] for n in model.graph.node
            if n.op_type == "MatMulNBits" and "_proj/" in n.name and n.name.split("/")[-2] in ("q_proj", "v_proj")}
    assert sorted(bits.values()) == [4, 8]
    assert "attn_qkv_proj" not in {t.name for t in model.graph.initializer}
    for got, ref in zip(fx.run(model, {"x": x}), want):  # qkv is an output too: the Concat restores its layout
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
