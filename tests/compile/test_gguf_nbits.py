"""compile.quantize.gguf: Q4_1 / Q8_0 GGUF blocks become MatMulNBits / GatherBlockQuantized exactly.

A synthetic llama-style GGUF (written with the gguf package) and a decoder-shaped ONNX graph whose float32
weights are its dequantized tensors (q/k rows un-permuted as transformers does): the converted graph must
compute what the float graph computes, its codes must be the GGUF's, a foreign GGUF must be refused, and SGM
row scales must fold into the scales. The embedded default's real GGUF is converted in the slow test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import gguf
from compile.quantize import gguf as g
from runtime.errors import UserError

H, HEADS, KV_HEADS, HEAD, INTER, VOCAB = 64, 4, 2, 16, 96, 48
PREFIX = "/inner/model/language_model/layers.0/"
LINEARS = {"self_attn/q_proj": ("attn_q", H, H), "self_attn/k_proj": ("attn_k", KV_HEADS * HEAD, H),
           "self_attn/v_proj": ("attn_v", KV_HEADS * HEAD, H), "self_attn/o_proj": ("attn_output", H, H),
           "mlp/gate_proj": ("ffn_gate", INTER, H), "mlp/up_proj": ("ffn_up", INTER, H),
           "mlp/down_proj": ("ffn_down", H, INTER)}


def _permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert script: HF q/k rows -> GGUF rows."""
    n = rows.shape[0]
    return rows.reshape(heads, 2, n // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def write_gguf(path: Path, seed: int) -> dict[str, np.ndarray]:
    """A GGUF with one llama layer (Q4_1) and a Q8_0 token embedding; returns the HF-order float32 weights."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    hf = {}
    for module, (name, out_f, in_f) in LINEARS.items():
        w_gguf = (rng.standard_normal((out_f, in_f)) * 0.05).astype(np.float32)
        raw = gguf.quants.quantize(w_gguf, gguf.GGMLQuantizationType.Q4_1)
        writer.add_tensor(f"blk.0.{name}.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        deq = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1)
        heads = HEADS if name == "attn_q" else KV_HEADS
        if name in ("attn_q", "attn_k"):  # the float32 model holds the un-permuted rows
            deq = deq[g.unpermute_order(out_f, heads)]
            assert np.array_equal(_permute(deq, heads), gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1))
        hf[module] = deq
    emb = (rng.standard_normal((VOCAB, H)) * 0.1).astype(np.float32)
    raw = gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    hf["embed"] = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


def decoder_graph(hf: dict[str, np.ndarray]) -> onnx.ModelProto:
    """x -> the seven Linears of one layer (their exported node names) -> lm_head; float32 weights [K, N]."""
    def mm(module: str, a: str, out: str) -> onnx.NodeProto:
        return helper.make_node("MatMul", [a, module.replace("/", "_")], [out], name=f"{PREFIX}{module}/MatMul")

    nodes = [mm("self_attn/q_proj", "x", "q"), mm("self_attn/k_proj", "x", "k"), mm("self_attn/v_proj", "x", "v"),
             mm("self_attn/o_proj", "q", "o"), mm("mlp/gate_proj", "x", "gate"), mm("mlp/up_proj", "x", "up"),
             helper.make_node("Mul", ["gate", "up"], ["act"]), mm("mlp/down_proj", "act", "down"),
             helper.make_node("Add", ["o", "down"], ["h"]),
             helper.make_node("MatMul", ["h", "lm_head"], ["logits"], name="/inner/lm_head/MatMul")]
    inits = [numpy_helper.from_array(np.ascontiguousarray(hf[m].T), m.replace("/", "_")) for m in LINEARS]
    inits.append(numpy_helper.from_array(np.ascontiguousarray(hf["embed"].T), "lm_head"))
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("x", f, [1, 3, H])],
                              [helper.make_tensor_value_info(n, f, None) for n in ("logits", "k", "v")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def embed_graph(hf: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"], name="/embed/Gather")], "embed",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, None, H])],
                              [numpy_helper.from_array(hf["embed"], "table")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, feeds: dict, optimize: bool = True) -> list[np.ndarray]:
    so = ort.SessionOptions()
    if not optimize:  # ORT fuses DequantizeLinear + MatMul into MatMulNBits with int8 activations
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    hf = write_gguf(root / "model.gguf", seed=0)
    return root, hf, g.GGUFWeights(root / "model.gguf")


def test_block_decoders_match_gguf_dequantize():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 96)) * 0.2).astype(np.float32)
    for kind, fn in ((gguf.GGMLQuantizationType.Q4_1, g.q4_1_blocks), (gguf.GGMLQuantizationType.Q8_0, g.q8_0_blocks)):
        raw = gguf.quants.quantize(x, kind)
        blocks = fn(raw)
        np.testing.assert_allclose(blocks.dequantize(), gguf.quants.dequantize(raw, kind), rtol=0, atol=2e-7)
        assert blocks.codes.max() <= (15 if blocks.bits == 4 else 255) and blocks.codes.shape == (8, 3, 32)


def test_unpermute_inverts_llama_cpp_permutation():
    rows = np.arange(48 * 2).reshape(48, 2)
    for heads in (2, 3, 4):
        assert np.array_equal(_permute(rows, heads)[g.unpermute_order(48, heads)], rows)


def test_decoder_converts_exactly(synthetic):
    root, hf, weights = synthetic
    model = decoder_graph(hf)
    x = np.random.default_rng(1).standard_normal((1, 3, H)).astype(np.float32)
    want = run(model, {"x": x})
    converted, stats = g.convert_decoder(decoder_graph(hf), weights, accuracy_level=1)
    assert stats["converted"] == {"Q4_1": 7, "Q8_0": 1} and stats["max_abs_diff_vs_float32"] < 1e-6
    ops = [n.op_type for n in converted.graph.node]
    offsets = [n.input[1] for n in converted.graph.node if n.op_type == "MatMul"]
    assert ops.count("MatMulNBits") == 8 and len(offsets) == 7 and all(o.endswith("_offsets") for o in offsets)
    assert ops.count("ReduceSum") == 3  # block sums shared: x (q, k, v, gate, up), q (o), act (down)
    assert {t.name for t in converted.graph.initializer}.isdisjoint(set(LINEARS) | {"lm_head"})
    got = run(converted, {"x": x})
    for a, b in zip(got, want):  # float32 compute (accuracy level 1): the GGUF's weights, exactly
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    fast, _ = g.convert_decoder(decoder_graph(hf), weights)  # accuracy level 4: int8 activations in the kernel
    for a, b in zip(run(fast, {"x": x}), want):
        assert np.abs(a - b).max() < 0.02 * np.abs(b).max()
    # the codes are the GGUF's own: unpack the up_proj B and compare with the raw Q4_1 nibbles
    node = next(n for n in converted.graph.node if "up_proj" in n.name and n.op_type == "MatMulNBits")
    inits = {t.name: numpy_helper.to_array(t) for t in converted.graph.initializer}
    packed = inits[node.input[1]]
    codes = np.concatenate([packed[..., None] & 15, packed[..., None] >> 4], -1).reshape(INTER, -1, 32)
    assert np.array_equal(codes, weights.blocks("blk.0.ffn_up.weight").codes)
    assert len(node.input) == 3  # no zero points: MatMulNBits' default 8, the fast integer kernels' form
    assert dict((a.name, a.i) for a in node.attribute) == {"K": H, "N": INTER, "bits": 4, "block_size": 32,
                                                         "accuracy_level": 1}


def test_sgm_row_scales_fold_into_the_scales(synthetic):
    root, hf, weights = synthetic
    rng = np.random.default_rng(2)
    alpha = {"layers.0.mlp.up_proj": rng.uniform(0.3, 1, INTER).astype(np.float32),
             "layers.0.mlp.down_proj": rng.uniform(0.3, 1, H).astype(np.float32)}
    folded_hf = dict(hf)
    folded_hf["mlp/up_proj"] = hf["mlp/up_proj"] * alpha["layers.0.mlp.up_proj"][:, None]
    folded_hf["mlp/down_proj"] = hf["mlp/down_proj"] * alpha["layers.0.mlp.down_proj"][:, None]
    with pytest.raises(UserError, match="differ from the bundle's"):  # the folded graph is not the GGUF as is
        g.convert_decoder(decoder_graph(folded_hf), weights, 1)
    converted, stats = g.convert_decoder(decoder_graph(folded_hf), weights, 1, alpha)
    assert stats["folded_modules"] == 2 and stats["max_abs_diff_vs_float32"] < 1e-6
    x = np.random.default_rng(5).standard_normal((1, 3, H)).astype(np.float32)
    np.testing.assert_allclose(run(converted, {"x": x})[0], run(decoder_graph(folded_hf), {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


def test_qfold_of_the_converted_graph_equals_converting_the_folded_one(synthetic):
    """compile.quantize.qfold on a GGUF-converted decoder scales MatMulNBits scales and the offsets' columns."""
    from compile.quantize.qfold import fold_graph

    _, hf, weights = synthetic
    alpha = {"layers.0.mlp.gate_proj": np.random.default_rng(4).uniform(0.2, 1, INTER).astype(np.float32)}
    folded_hf = {**hf, "mlp/gate_proj": hf["mlp/gate_proj"] * alpha["layers.0.mlp.gate_proj"][:, None]}
    a, _ = g.convert_decoder(decoder_graph(folded_hf), weights, 1, alpha)
    b, report = fold_graph(g.convert_decoder(decoder_graph(hf), weights, 1)[0], alpha)
    assert report["ops"] == {"MatMulNBits": 1, "offsets MatMul": 1}
    ta = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    tb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ta.keys() == tb.keys()
    for k in ta:
        if ta[k].dtype == np.uint8:
            assert np.array_equal(ta[k], tb[k]), k
        else:  # offsets m + 8 d may cancel: compare on the tensor's own scale
            np.testing.assert_allclose(tb[k], ta[k], rtol=1e-6, atol=1e-6 * np.abs(ta[k]).max(), err_msg=k)


def test_embedding_converts_to_8bit_gather(synthetic):
    _, hf, weights = synthetic
    converted, stats = g.convert_embed(embed_graph(hf), weights)
    assert [n.op_type for n in converted.graph.node] == ["GatherBlockQuantized"] and stats["max_abs_diff_vs_float32"] == 0
    ids = np.array([[0, 5, 47, 3]], np.int64)
    np.testing.assert_array_equal(run(converted, {"ids": ids})[0], hf["embed"][ids])


def test_foreign_or_unsupported_gguf_is_refused(synthetic, tmp_path: Path):
    _, hf, _ = synthetic
    write_gguf(tmp_path / "other.gguf", seed=9)
    with pytest.raises(UserError, match="not the checkpoint the bundle was exported from"):
        g.convert_decoder(decoder_graph(hf), g.GGUFWeights(tmp_path / "other.gguf"), 1)
    writer = gguf.GGUFWriter(str(tmp_path / "f16.gguf"), "llama")
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((INTER, H), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match="is F16 .* only Q4_1, Q8_0, Q5_0, Q4_K, Q6_K blocks"):
        g.GGUFWeights(tmp_path / "f16.gguf").blocks("blk.0.ffn_up.weight")
    with pytest.raises(UserError, match="has no tensor blk.0.attn_q.weight"):
        g.GGUFWeights(tmp_path / "f16.gguf").blocks("blk.0.attn_q.weight")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(UserError, match="not a readable GGUF"):
        g.GGUFWeights(tmp_path / "junk.gguf")


@pytest.mark.slow
def test_the_default_converts_exactly(tmp_path: Path):
    """smol-llava's exported bundle -> GGUF-exact int4 (accuracy level 4): within 1% NLL of float32."""
    from compile.export.bundle import export_bundle

    export_bundle("smol-llava", tmp_path / "fp32")
    manifest = g.gguf_bundle(tmp_path / "fp32", g.default_gguf(), tmp_path / "int4", threads=2)
    assert manifest["precision"]["graphs"]["decoder"]["converted"] == {"Q4_1": 210, "Q8_0": 1}
    assert manifest["check"]["top1_agreement"] > 0.95
    assert manifest["check"]["mean_nll_new"] < 1.01 * manifest["check"]["mean_nll_source"]


def test_tensorrt_qdq_form_uses_standard_ops_only(synthetic):
    """int4-qdq: int4 DequantizeLinear (symmetric, blocks of 32 on axis 0) + offsets; lm_head stays float."""
    from compile.quantize.ort_cpu import upgrade_opset

    _, hf, weights = synthetic
    x = np.random.default_rng(1).standard_normal((1, 3, H)).astype(np.float32)
    want = run(decoder_graph(hf), {"x": x})
    converted, stats = g.convert_decoder(upgrade_opset(decoder_graph(hf)), weights, qdq=True)
    assert stats["converted"] == {"Q4_1": 7} and stats["kept_float"] == ["/inner/lm_head/MatMul"]
    assert {n.domain for n in converted.graph.node} == {""}  # nothing TensorRT's parser would refuse as contrib
    inits = {t.name: t for t in converted.graph.initializer}
    dq = [n for n in converted.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 7 and all(len(n.input) == 2 for n in dq)  # no zero points
    assert {inits[n.input[0]].data_type for n in dq} == {onnx.TensorProto.INT4}
    assert all({a.name: a.i for a in n.attribute} == {"axis": 0, "block_size": 32} for n in dq)
    for a, b in zip(run(converted, {"x": x}, optimize=False), want):  # float32 math on the GGUF's weights: exact
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    up = next(n for n in dq if "up_proj" in n.name)
    w = numpy_helper.to_array(inits[up.input[0]]).astype(np.int16)  # [K, N], -8..7
    assert np.array_equal(w.T.reshape(INTER, -1, 32) + 8, weights.blocks("blk.0.ffn_up.weight").codes)
