"""compile.quantize.gptq: GPTQ's blocks beat round-to-nearest where activations are correlated, equal the plain fit
where they are not, round-trip through MatMulNBits, and the gptq method writes a working int4 bundle whose fused
decoder carries the same blocks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compile.quantize.gguf import Blocks, matmul_nbits_node
from compile.quantize.gptq import (DecoderBlocks, ExactModules, gptq_blocks, hessians, minmax_params,
                                   quantize_decoder, relative_output_error, unpack_matmul_nbits)
from runtime.errors import UserError


def correlated(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A weight [n, k] and X [tokens, k] whose features are strongly correlated (near rank 32, as an LLM's
    activations are near low rank): there GPTQ's output error is about 0.28 of rounding's (3 seeds)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2048, 32)) @ rng.normal(size=(32, k)) + 0.1 * rng.normal(size=(2048, k))
    return rng.normal(size=(n, k)).astype(np.float32) * 0.05, x


def rtn(w: np.ndarray, symmetric: bool = False) -> Blocks:
    """Round to nearest on the same grid (minmax_params per block of 32)."""
    n, k = w.shape
    s, z = (np.stack(a, 1) for a in zip(*(minmax_params(w[:, j:j + 32], symmetric) for j in range(0, k, 32))))
    q = np.clip(np.rint(w.reshape(n, -1, 32) / s[..., None]) + z[..., None], 0, 15).astype(np.uint8)
    if symmetric:
        return Blocks(q, s, -8.0 * s, 4)
    return Blocks(q, s, -z * s, 4, z.astype(np.uint8))


@pytest.mark.parametrize("symmetric,act_order", [(False, False), (True, False), (False, True)])
def test_gptq_has_less_output_error_than_rounding(symmetric: bool, act_order: bool):
    w, x = correlated(96, 256)
    x *= np.exp(np.random.default_rng(5).normal(size=256))  # inputs of different scales: an order to follow
    h = x.T @ x
    g = gptq_blocks(w, h, symmetric, act_order=act_order)
    r = rtn(w, symmetric)
    assert (g.zero_points is None) == symmetric
    assert g.codes.shape == (96, 8, 32) and g.codes.max() <= 15
    e_gptq, e_rtn = relative_output_error(w, g, h), relative_output_error(w, r, h)
    assert e_gptq < 0.5 * e_rtn, (e_gptq, e_rtn)
    # and it is still a quantization of this weight, not another's
    assert np.sqrt(np.mean((g.dequantize() - w) ** 2) / np.mean(w ** 2)) < 0.5


def test_with_uncorrelated_inputs_gptq_is_round_to_nearest():
    """H = I: no error can be pushed onto other columns, so GPTQ is round to nearest on the same grid."""
    w, _ = correlated(40, 128, seed=3)
    g, r = gptq_blocks(w, np.eye(128) * 5.0), rtn(w)
    np.testing.assert_array_equal(g.codes, r.codes)
    np.testing.assert_array_equal(g.zero_points, r.zero_points)
    np.testing.assert_allclose(g.scales, r.scales, rtol=1e-6)
    np.testing.assert_array_equal(gptq_blocks(w, np.eye(128) * 5.0, act_order=True).codes, r.codes)


def test_dead_inputs_and_bad_shapes():
    w, x = correlated(16, 64, seed=1)
    x[:, 5] = 0.0  # an input that is always zero: its weights do not matter and must not break the Cholesky
    g = gptq_blocks(w, x.T @ x)
    assert np.isfinite(g.scales).all()
    with pytest.raises(ValueError, match="divisible by 32"):
        gptq_blocks(w[:, :40], np.eye(40))


@pytest.mark.parametrize("symmetric,k", [(False, 96), (True, 64), (False, 64)])
def test_blocks_round_trip_through_matmul_nbits(symmetric: bool, k: int):
    """Odd block counts pack two zero points per byte with padding; the reader undoes the writer exactly."""
    w, x = correlated(24, k, seed=2)
    blocks = gptq_blocks(w, x.T @ x, symmetric)
    node = helper.make_node("MatMul", ["a", "w"], ["y"], name="/model/layers.0/mlp/up_proj/MatMul")
    nodes, tensors = matmul_nbits_node(node, blocks, 4, None)
    back = unpack_matmul_nbits(nodes[0], {t.name: t for t in tensors})
    np.testing.assert_array_equal(back.codes, blocks.codes)
    np.testing.assert_array_equal(back.scales, blocks.scales)
    np.testing.assert_allclose(back.dequantize(), blocks.dequantize(), rtol=0, atol=1e-7)
    assert (back.zero_points is None) == symmetric


def tiny_graph(k: int = 64, n: int = 32, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """x [b, s, k] -> MatMul W1 -> Relu -> MatMul W2 (the second named like a decoder's lm_head)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(k, n)).astype(np.float32) * 0.1
    w2 = rng.normal(size=(n, k)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="/model/layers.0/mlp/up_proj/MatMul"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["logits"], name="/lm_head/MatMul")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, k])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, w1


def test_hessians_are_x_transpose_x_over_every_feed():
    model, w1 = tiny_graph()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(size=(1, s, 64)).astype(np.float32)} for s in (3, 7)]
    h, positions = hessians(model, feeds, ["x", "r"])
    x = np.concatenate([f["x"][0] for f in feeds])
    assert positions == 10
    want = x.T.astype(np.float64) @ x  # each feed's product is an SGEMM: float32 rounding, relative to the largest
    np.testing.assert_allclose(h["x"], want, rtol=0, atol=1e-6 * np.abs(want).max())
    r = np.maximum(x @ w1, 0)
    np.testing.assert_allclose(h["r"], r.T.astype(np.float64) @ r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lm_head", [True, False])
def test_quantize_decoder_runs_and_stays_close(lm_head: bool):
    import onnxruntime as ort

    model, _ = tiny_graph()
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.normal(size=(1, 40, 64)).astype(np.float32)} for _ in range(8)]  # 320 positions >> 64
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out, stats = quantize_decoder(onnx.ModelProto.FromString(model.SerializeToString()), feeds, lm_head=lm_head)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("MatMulNBits") == (2 if lm_head else 1) and ops.count("MatMul") == (0 if lm_head else 1)
    assert stats["quantized"] == ops.count("MatMulNBits") and stats["calibration"]["positions"] == 320
    assert bool(stats["kept_float"]) != lm_head
    new = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    test = {"x": rng.normal(size=(1, 5, 64)).astype(np.float32)}
    a, b = ref.run(None, test)[0], new.run(None, test)[0]
    rel = np.sqrt(np.mean((a - b) ** 2) / np.mean(a ** 2))
    assert rel < 0.12, rel  # 4-bit rounding of a Gaussian weight alone: about 0.09


def test_an_input_size_off_the_block_grid_is_refused_before_calibrating():
    model, _ = tiny_graph(k=48)
    with pytest.raises(UserError, match="not a multiple of 32; use --method rtn"):
        quantize_decoder(model, feeds=[])


def test_decoder_blocks_by_gguf_name_and_refusals():
    model, _ = tiny_graph()
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.normal(size=(1, 6, 64)).astype(np.float32)}]
    out, _ = quantize_decoder(model, feeds)
    blocks = DecoderBlocks(out)
    assert blocks.blocks("blk.0.ffn_up.weight").codes.shape == (32, 2, 32)
    assert blocks.blocks("token_embd.weight").codes.shape == (64, 1, 32)
    with pytest.raises(UserError, match="no quantized weight for blk.1.ffn_up.weight"):
        blocks.blocks("blk.1.ffn_up.weight")
    with pytest.raises(UserError, match="no MatMulNBits"):
        DecoderBlocks(tiny_graph()[0])


def test_spec_refuses_gptq_outside_int4(tmp_path: Path):
    from compile.quantize import QuantSpec

    with pytest.raises(UserError, match="int4 MatMulNBits blocks only"):
        QuantSpec("int8", method="gptq").check()
    with pytest.raises(UserError, match="gguf method's int4 only"):
        QuantSpec("int4", method="gptq", gguf_lm_head="q4").check()
    with pytest.raises(UserError, match="--act-order is GPTQ's"):
        QuantSpec("int4", method="rtn", act_order=True).check()


def test_calibration_prompts_default_per_method():
    from compile.quantize import QuantSpec

    assert QuantSpec("int4", method="gptq").items_for("gptq") == 128
    assert QuantSpec("int8-qdq").items_for("static-qdq") == 16
    assert QuantSpec("int4", method="gptq", calibration_items=8).items_for("gptq") == 8
    with pytest.raises(UserError, match="at least one"):
        QuantSpec("int4", method="gptq", calibration_items=0).check()


def _gguf_fixtures():
    """tests/compile/test_gguf_nbits.py's synthetic Q4_1 GGUF and decoder graph (one llama layer + lm_head)."""
    import importlib.util
    import sys

    path = Path(__file__).parents[1] / "test_gguf_nbits.py"
    spec = importlib.util.spec_from_file_location("gguf_fixtures", path)
    fx = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = fx
        spec.loader.exec_module(fx)
    return fx


def test_exact_modules_keep_the_gguf_blocks_and_the_rest_is_gptq(tmp_path: Path):
    """Mixed precision: the named Linears carry the GGUF's own blocks (Q4_1: 4-bit + block-sum offsets, exactly the
    float weights), every other Linear GPTQ blocks with integer zero points; DecoderBlocks reads both back (the
    exact ones with their offsets), so compile.fused puts the same weights into its fused decoder."""
    import onnxruntime as ort

    from compile.quantize.gguf import GGUFWeights

    fx = _gguf_fixtures()
    hf = fx.write_gguf(tmp_path / "t.gguf", seed=3)
    weights = GGUFWeights(tmp_path / "t.gguf")
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.normal(size=(1, 3, fx.H)).astype(np.float32)} for _ in range(40)]
    exact = ExactModules(["self_attn/v_proj", "mlp/down_proj"], weights)
    out, stats = quantize_decoder(fx.decoder_graph(hf), feeds, accuracy_level=1, exact=exact,
                                  lm_head_block_size=64)
    assert stats["exact"]["linears"] == 2 and stats["exact"]["gguf_types"] == {"Q4_1": 2}
    assert stats["quantized"] == 6 and stats["lm_head_block_size"] == 64
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("MatMulNBits") == 8 and ops.count("MatMul") == 2  # the two exact Linears' offsets MatMuls
    blocks = DecoderBlocks(out)
    for name in ("blk.0.attn_v.weight", "blk.0.ffn_down.weight"):
        np.testing.assert_allclose(blocks.blocks(name).dequantize(), weights.blocks(name).dequantize(), rtol=0,
                                   atol=1e-6)
    up = blocks.blocks("blk.0.ffn_up.weight")
    assert up.zero_points is not None and np.abs(up.dequantize() - hf["mlp/up_proj"]).max() > 1e-3
    assert blocks.blocks("token_embd.weight").block_size == 64
    x = rng.normal(size=(1, 3, fx.H)).astype(np.float32)
    ref = fx.run(fx.decoder_graph(hf), {"x": x})
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-5, atol=1e-5)  # v: the GGUF's weights, float32 compute
    assert np.abs(got[1] - ref[1]).max() > 1e-4  # k: GPTQ's, not the float weights
    with pytest.raises(UserError, match="no Linear of the decoder matches --exact-modules nothing"):
        quantize_decoder(fx.decoder_graph(hf), feeds, exact=ExactModules(["nothing"], weights))


def test_exact_modules_refuse_a_foreign_gguf_and_other_methods(tmp_path: Path):
    from compile.quantize import QuantSpec
    from compile.quantize.gguf import GGUFWeights

    fx = _gguf_fixtures()
    hf = fx.write_gguf(tmp_path / "a.gguf", seed=3)
    fx.write_gguf(tmp_path / "b.gguf", seed=4)
    feeds = [{"x": np.ones((1, 3, fx.H), np.float32)}]
    with pytest.raises(UserError, match="not the checkpoint|differ"):
        quantize_decoder(fx.decoder_graph(hf), feeds,
                         exact=ExactModules(["self_attn/v_proj"], GGUFWeights(tmp_path / "b.gguf")))
    with pytest.raises(UserError, match="GPTQ's"):
        QuantSpec("int4", method="rtn", exact_modules=("self_attn/",)).check()
    with pytest.raises(UserError, match="GPTQ's"):
        QuantSpec("int4", method="gguf", lm_head_block_size=64).check()
    with pytest.raises(UserError, match=r"\(16, 32, 64, 128\) weights, not 48"):
        quantize_decoder(fx.decoder_graph(hf), feeds, lm_head_block_size=48)
    with pytest.raises(UserError, match="--lm-head-block-size must be one of"):
        QuantSpec("int4", method="gptq", lm_head_block_size=48).check()
