"""compile.quantize.gguf on gemma-llava's GGUF types: Q4_K, Q5_0 and Q6_K blocks become MatMulNBits exactly.

Hand-made blocks (random bytes with finite float16 scales) are unpacked and compared with the gguf package's own
dequantizer; a synthetic gemma3-architecture GGUF (one layer typed as Gemma 3 270M's Q4_K_M file types them, no
q/k permutation) converts to a decoder graph that computes x @ the dequantized weights; an unknown type is refused;
the recipe picks the GGUF route only for gemma-llava bundles of the GGUF's own weights. The real GGUF is checked in
the slow test.
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

Q = gguf.GGMLQuantizationType
# byte offsets of the float16 super-scales in each block (the rest: codes and sub-block scales, any byte is valid)
F16_AT = {Q.Q4_K: (0, 2), Q.Q5_0: (0,), Q.Q6_K: (208,), Q.Q8_0: (0,), Q.Q4_1: (0, 2), Q.Q2_K: (80, 82)}
H, INTER, VOCAB, HEADS = 256, 512, 40, 4  # K-quants need inputs that are multiples of 256
PREFIX = "/language_model/model/layers.0/"
# the module, its GGUF tensor and type (as gemma-3-270m-q4_k_m.gguf has them), and [out, in]
LINEARS = {"self_attn/q_proj": ("attn_q", Q.Q5_0, H, H), "self_attn/k_proj": ("attn_k", Q.Q5_0, H // 4, H),
           "self_attn/v_proj": ("attn_v", Q.Q8_0, H // 4, H), "self_attn/o_proj": ("attn_output", Q.Q4_K, H, H),
           "mlp/gate_proj": ("ffn_gate", Q.Q5_0, INTER, H), "mlp/up_proj": ("ffn_up", Q.Q5_0, INTER, H),
           "mlp/down_proj": ("ffn_down", Q.Q6_K, H, INTER)}


def random_blocks(kind: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Raw GGUF rows of `kind`: random codes, sub-block scales and mins, small finite float16 super-scales."""
    block, size = gguf.GGML_QUANT_SIZES[kind]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for at in F16_AT[kind]:
        d = rng.uniform(1e-4, 2e-3, (rows, cols // block)).astype(np.float16)
        raw[..., at:at + 2] = d.view(np.uint8).reshape(rows, -1, 2)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("kind, fn, bits, block", [(Q.Q4_K, g.q4_k_blocks, 4, 32), (Q.Q5_0, g.q5_0_blocks, 8, 32),
                                                   (Q.Q6_K, g.q6_k_blocks, 8, 16)])
def test_unpacking_matches_gguf_dequantize(kind, fn, bits, block):
    rng = np.random.default_rng(int(kind))
    raw = random_blocks(kind, 6, 512, rng)
    blocks = fn(raw)
    assert blocks.bits == bits and blocks.block_size == block and blocks.codes.shape == (6, 512 // block, block)
    np.testing.assert_array_equal(blocks.dequantize(), gguf.quants.dequantize(raw, kind))  # bit for bit
    z = 1 << (bits - 1)
    span = {Q.Q4_K: (0, 15), Q.Q5_0: (z - 16, z + 15), Q.Q6_K: (z - 32, z + 31)}[kind]
    assert span[0] <= blocks.codes.min() and blocks.codes.max() <= span[1]
    if kind == Q.Q4_K:  # the mins go through the block-sums correction
        assert blocks.correction().any()
    else:  # symmetric around the default zero point: no offsets MatMul
        assert not blocks.correction().any()


def test_q5_0_of_the_gguf_quantizer_unpacks_too():
    x = (np.random.default_rng(7).standard_normal((8, 96)) * 0.2).astype(np.float32)
    raw = gguf.quants.quantize(x, Q.Q5_0)
    np.testing.assert_array_equal(g.q5_0_blocks(raw).dequantize(), gguf.quants.dequantize(raw, Q.Q5_0))


def write_gemma3_gguf(path: Path, seed: int, extra: dict[str, Q] | None = None) -> dict[str, np.ndarray]:
    """A gemma3-architecture GGUF with one layer of hand-made blocks; returns the float32 weights [out, in] a
    bundle exported from it holds (the GGUF's rows as they are: gemma3 has no q/k permutation)."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(1)
    hf = {}
    tensors = {f"blk.0.{name}.weight": (kind, rows, cols, module)
               for module, (name, kind, rows, cols) in LINEARS.items()}
    tensors["token_embd.weight"] = (Q.Q8_0, VOCAB, H, "embed")
    for name, kind in (extra or {}).items():
        tensors[name] = (kind, H, H, name)
    for name, (kind, rows, cols, key) in tensors.items():
        raw = random_blocks(kind, rows, cols, rng)
        writer.add_tensor(name, raw, raw_dtype=kind)
        hf[key] = gguf.quants.dequantize(raw, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


def decoder_graph(hf: dict[str, np.ndarray]) -> onnx.ModelProto:
    """x -> the seven Linears of one layer (the exported node names) -> lm_head (the tied embedding)."""
    def mm(module: str, a: str, out: str) -> onnx.NodeProto:
        return helper.make_node("MatMul", [a, module.replace("/", "_")], [out], name=f"{PREFIX}{module}/MatMul")

    nodes = [mm("self_attn/q_proj", "x", "q"), mm("self_attn/k_proj", "x", "k"), mm("self_attn/v_proj", "x", "v"),
             mm("self_attn/o_proj", "q", "o"), mm("mlp/gate_proj", "x", "gate"), mm("mlp/up_proj", "x", "up"),
             helper.make_node("Mul", ["gate", "up"], ["act"]), mm("mlp/down_proj", "act", "down"),
             helper.make_node("Add", ["o", "down"], ["h"]),
             helper.make_node("MatMul", ["h", "lm_head"], ["logits"], name="/language_model/lm_head/MatMul")]
    inits = [numpy_helper.from_array(np.ascontiguousarray(hf[m].T), m.replace("/", "_")) for m in LINEARS]
    inits.append(numpy_helper.from_array(np.ascontiguousarray(hf["embed"].T), "lm_head"))
    f = TensorProto.FLOAT
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("logits", "q", "k", "v", "o", "down")]
    graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("x", f, [1, 3, H])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma3-gguf")
    hf = write_gemma3_gguf(root / "model.gguf", seed=0)
    return hf, g.GGUFWeights(root / "model.gguf")


def test_gemma3_gguf_is_read_without_permutation(synthetic):
    hf, weights = synthetic
    assert (weights.arch, weights.heads, weights.kv_heads) == ("gemma3", HEADS, 1)
    np.testing.assert_array_equal(weights.blocks("blk.0.attn_q.weight").dequantize(), hf["self_attn/q_proj"])
    np.testing.assert_array_equal(weights.blocks("blk.0.attn_k.weight").dequantize(), hf["self_attn/k_proj"])


def test_matmulnbits_computes_x_times_the_dequantized_weights(synthetic):
    hf, weights = synthetic
    x = np.random.default_rng(1).standard_normal((1, 3, H)).astype(np.float32)
    converted, stats = g.convert_decoder(decoder_graph(hf), weights, accuracy_level=1)
    assert stats["converted"] == {"Q5_0": 4, "Q8_0": 2, "Q4_K": 1, "Q6_K": 1}
    assert stats["max_abs_diff_vs_float32"] == 0  # the float32 weights are the GGUF's bit for bit
    nbits = {n.name.split("/")[-2]: {a.name: a.i for a in n.attribute} for n in converted.graph.node
             if n.op_type == "MatMulNBits"}
    assert {m: (a["bits"], a["block_size"]) for m, a in nbits.items()} == {
        "q_proj": (8, 32), "k_proj": (8, 32), "v_proj": (8, 32), "o_proj": (4, 32), "gate_proj": (8, 32),
        "up_proj": (8, 32), "down_proj": (8, 16), "lm_head": (8, 32)}
    offsets = [n for n in converted.graph.node if n.op_type == "MatMul"]
    assert [n.name for n in offsets] == [PREFIX + "self_attn/o_proj/MatMul_offsets"]  # only Q4_K has mins
    want = {"q": x @ hf["self_attn/q_proj"].T, "k": x @ hf["self_attn/k_proj"].T, "v": x @ hf["self_attn/v_proj"].T}
    want["o"] = want["q"] @ hf["self_attn/o_proj"].T
    act = (x @ hf["mlp/gate_proj"].T) * (x @ hf["mlp/up_proj"].T)
    want["down"] = act @ hf["mlp/down_proj"].T
    want["logits"] = (want["o"] + want["down"]) @ hf["embed"].T
    got = dict(zip(("logits", "q", "k", "v", "o", "down"), run(converted, {"x": x})))
    for name, value in want.items():  # float32 compute (accuracy level 1) on the GGUF's weights
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5 * np.abs(value).max(), err_msg=name)
    fast, _ = g.convert_decoder(decoder_graph(hf), weights)  # accuracy level 4: int8 activations in the kernel
    logits = run(fast, {"x": x})[0]
    assert np.abs(logits - want["logits"]).max() < 0.02 * np.abs(want["logits"]).max()


def test_row_scales_fold_into_k_quant_scales(synthetic):
    """A folded checkpoint's SGM factors on a Q6_K down_proj and a Q5_0 up_proj go into the scales."""
    hf, weights = synthetic
    rng = np.random.default_rng(2)
    alpha = {"layers.0.mlp.up_proj": rng.uniform(0.3, 1, INTER).astype(np.float32),
             "layers.0.mlp.down_proj": rng.uniform(0.3, 1, H).astype(np.float32)}
    folded = {**hf, "mlp/up_proj": hf["mlp/up_proj"] * alpha["layers.0.mlp.up_proj"][:, None],
              "mlp/down_proj": hf["mlp/down_proj"] * alpha["layers.0.mlp.down_proj"][:, None]}
    converted, stats = g.convert_decoder(decoder_graph(folded), weights, 1, alpha)
    assert stats["folded_modules"] == 2
    x = np.random.default_rng(5).standard_normal((1, 3, H)).astype(np.float32)
    for a, b in zip(run(converted, {"x": x}), run(decoder_graph(folded), {"x": x})):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_unknown_type_is_refused(tmp_path: Path):
    write_gemma3_gguf(tmp_path / "q2k.gguf", seed=3, extra={"blk.1.ffn_up.weight": Q.Q2_K})
    weights = g.GGUFWeights(tmp_path / "q2k.gguf")
    with pytest.raises(UserError, match="blk.1.ffn_up.weight is Q2_K .* only Q4_1, Q8_0, Q5_0, Q4_K, Q6_K blocks"):
        weights.blocks("blk.1.ffn_up.weight")


def test_the_recipe_picks_the_gguf_only_for_the_ggufs_own_weights():
    from compile.recipes import recipe

    gemma, smol = recipe("gemma-llava"), recipe("smol-llava")
    own = gemma.gguf_mlp_weights_sha256
    assert gemma.quantizes_from_gguf({"model": {"mlp_weights_sha256": own}}, "int4")
    assert not gemma.quantizes_from_gguf({"model": {"mlp_weights_sha256": own}}, "int4-qdq")
    assert not gemma.quantizes_from_gguf({"model": {"mlp_weights_sha256": "0" * 64}}, "int4")  # tiny / LoRA
    folded = {"model": {"folded": True, "mlp_weights_sha256": "1" * 64,
                        "sgm_folded": {"source_mlp_weights_sha256": own}}}
    assert gemma.quantizes_from_gguf(folded, "int4")
    assert smol.quantizes_from_gguf({"model": {}}, "int4") and smol.quantizes_from_gguf({}, "int4-qdq")
    assert recipe("llava").gguf_file() is None
    with pytest.raises(UserError, match="no known GGUF"):
        g.default_gguf("llava")


@pytest.mark.slow
def test_the_real_gemma_gguf_unpacks_exactly():
    """Every quantized tensor of gemma-3-270m-q4_k_m.gguf (asset cache) against gguf's dequantizer, bit for bit."""
    from calib.models.gemma3 import gguf_file

    weights = g.GGUFWeights(gguf_file())
    assert weights.arch == "gemma3"
    seen = set()
    for name, t in weights.tensors.items():
        if t.tensor_type.name == "F32":
            continue
        seen.add(t.tensor_type.name)
        raw = np.asarray(t.data)
        np.testing.assert_array_equal(weights.blocks(name).dequantize(), gguf.quants.dequantize(raw, t.tensor_type),
                                      err_msg=name)
    assert seen == {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}


def test_gemma_llavas_default_int4_is_the_recipes_mixed_gptq():
    """method auto at int4: the GGUF's own gemma-llava model takes the recipe's mixed GPTQ (recorded as run), other
    gemma3 models (tiny, LoRA) the precision's default, smol-llava the GGUF's exact blocks."""
    from types import SimpleNamespace

    from compile.quantize import QuantSpec
    from compile.quantize.registry import method_name, resolve_spec
    from compile.recipes import recipe

    gemma = recipe("gemma-llava")
    own = SimpleNamespace(manifest={"model_type": "gemma-llava",
                                    "model": {"mlp_weights_sha256": gemma.gguf_mlp_weights_sha256}})
    spec = resolve_spec(own, QuantSpec("int4"))
    assert spec.method == "gptq" and spec.exact_modules == gemma.int4_gptq["exact_modules"]
    assert spec.lm_head_block_size == 64 and "layers.13/mlp/" in spec.exact_modules
    assert method_name(own, spec) == "gptq" and spec.to_dict()["exact_modules"] == list(spec.exact_modules)
    assert resolve_spec(own, QuantSpec("int4", method="gguf")).method == "gguf"  # asked for: the exact blocks
    assert resolve_spec(own, QuantSpec("int8")).method == "auto"
    tiny = SimpleNamespace(manifest={"model_type": "gemma-llava", "model": {"mlp_weights_sha256": "0" * 64}})
    assert method_name(tiny, resolve_spec(tiny, QuantSpec("int4"))) == "rtn"
    smol = SimpleNamespace(manifest={"model_type": "smol-llava", "model": {}})
    assert method_name(smol, resolve_spec(smol, QuantSpec("int4"))) == "gguf-exact"
