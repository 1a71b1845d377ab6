"""compile.quantize.gguf's approximations (issue 20): integer zero points for Q4_1's offsets and a 4-bit lm_head.

On the synthetic Q4_1 / Q8_0 GGUF of tests/compile/test_gguf_nbits.py: each option's graph computes x @ the
weights it intends (Approximation.apply of the GGUF's blocks) at float32 compute; the offsets MatMul disappears
with integer zero points; the fits are no worse than rounding; the default (exact) graph is unchanged; the fused
decoder's conversion applies the same option.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from compile.quantize import gguf as g
from compile.quantize.spec import QuantSpec
from runtime.errors import UserError

_ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, _ROOT / file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


fx = _load("gguf_approx_fixtures", "test_gguf_nbits.py")
fused_fx = _load("gguf_approx_fused_fixtures", "test_fused_gguf.py")

OPTIONS = [g.Approximation("round", "q8"), g.Approximation("refit", "q8"), g.Approximation("exact", "q4"),
           g.Approximation("exact", "q4-sym"), g.Approximation("refit", "q4-sym")]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-approx")
    hf = fx.write_gguf(root / "model.gguf", seed=0)
    return hf, g.GGUFWeights(root / "model.gguf")


def intended(hf: dict, weights: g.GGUFWeights, approx: g.Approximation) -> dict[str, np.ndarray]:
    """The float32 weights [out, in] each Linear should compute with under `approx`."""
    out = {}
    for module, (name, _, _) in fx.LINEARS.items():
        out[module] = approx.apply(weights.blocks(f"blk.0.{name}.weight"), False).dequantize()
    out["embed"] = approx.apply(weights.blocks("token_embd.weight"), True).dequantize()
    return out


@pytest.mark.parametrize("approx", OPTIONS, ids=lambda a: f"{a.zero_points}-{a.lm_head}")
def test_option_computes_x_times_its_intended_weights(synthetic, approx):
    hf, weights = synthetic
    want_w = intended(hf, weights, approx)
    x = np.random.default_rng(1).standard_normal((1, 3, fx.H)).astype(np.float32)
    want = fx.run(fx.decoder_graph(want_w), {"x": x})
    converted, stats = g.convert_decoder(fx.decoder_graph(hf), weights, accuracy_level=1, approximation=approx)
    for a, b in zip(fx.run(converted, {"x": x}), want):  # float32 compute: the intended weights
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    nodes = list(converted.graph.node)
    offsets = [n for n in nodes if n.op_type == "MatMul"]
    assert (len(offsets) == 7) == (approx.zero_points == "exact")  # integer zero points: no offsets MatMul
    assert (not any(n.op_type == "ReduceSum" for n in nodes)) == (approx.zero_points != "exact")
    head = next(n for n in nodes if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    assert {a.name: a.i for a in head.attribute}["bits"] == (8 if approx.lm_head == "q8" else 4)
    assert len(head.input) == (4 if approx.lm_head == "q4" else 3)  # q4-sym: default zero point, genai's form
    assert set(stats["approximation"]) == ({"layers"} if approx.zero_points != "exact" else set()) | (
        {"lm_head"} if approx.lm_head != "q8" else set())
    # they are approximations: the weights moved, by a bounded amount
    for rec in stats["approximation"].values():
        assert 0 < rec["rel_rms_dw"] < 0.2


def test_exact_option_leaves_the_default_graph_unchanged(synthetic):
    hf, weights = synthetic
    default, s0 = g.convert_decoder(fx.decoder_graph(hf), weights)
    explicit, s1 = g.convert_decoder(fx.decoder_graph(hf), weights, approximation=g.Approximation())
    assert default.SerializeToString() == explicit.SerializeToString()
    assert s0 == s1 and "approximation" not in s0


def test_round_keeps_codes_and_moves_each_block_by_at_most_half_a_step(synthetic):
    _, weights = synthetic
    b = weights.blocks("blk.0.ffn_up.weight")
    r = g.round_zero_points(b)
    assert np.array_equal(r.codes, b.codes) and np.array_equal(r.scales, b.scales)
    shift = r.dequantize() - b.dequantize()  # constant within a block: -(m + d z)
    per_block = shift.reshape(*b.scales.shape, 32)
    np.testing.assert_allclose(per_block, per_block[..., :1].repeat(32, -1), atol=1e-6)
    inside = (-b.offsets / b.scales >= 0) & (-b.offsets / b.scales <= 15)
    assert np.all(np.abs(per_block[..., 0])[inside] <= b.scales[inside] / 2 + 1e-6)


def test_refit_is_no_worse_than_rounding_per_block(synthetic):
    _, weights = synthetic
    for name in ("blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "blk.0.attn_q.weight"):
        b = weights.blocks(name)
        w = b.dequantize().reshape(*b.scales.shape, 32)
        err = {mode: ((g.Approximation(mode).apply(b, False).dequantize().reshape(w.shape) - w) ** 2).sum(-1)
               for mode in ("round", "refit")}
        assert np.all(err["refit"] <= err["round"] * (1 + 1e-5) + 1e-12)


def test_fit_int4_beats_round_to_nearest():
    w = (np.random.default_rng(3).standard_normal((16, 128)) * 0.05).astype(np.float32)
    x = w.reshape(16, 4, 32)
    lo, hi = np.minimum(x.min(-1), 0), np.maximum(x.max(-1), 0)
    s = (hi - lo) / 15
    z = np.clip(np.rint(-lo / s), 0, 15)
    rtn = (np.clip(np.rint(x / s[..., None]) + z[..., None], 0, 15) - z[..., None]) * s[..., None]
    fit = g.fit_int4(w)
    assert fit.zero_points is not None and fit.codes.max() <= 15
    assert ((fit.dequantize() - w) ** 2).sum() < ((rtn.reshape(w.shape) - w) ** 2).sum()
    sym = g.fit_int4(w, symmetric=True)
    assert sym.zero_points is None and not sym.correction().any()  # default zero point 8: no offsets


def test_fused_conversion_applies_the_option(tmp_path: Path):
    from compile.fused import convert_to_gguf

    hf = fx.write_gguf(tmp_path / "model.gguf", seed=0)
    weights = g.GGUFWeights(tmp_path / "model.gguf")
    approx = g.Approximation("refit", "q4")
    want_w = intended(hf, weights, approx)
    x = np.random.default_rng(1).standard_normal((1, 3, fx.H)).astype(np.float32)
    want = fx.run(fused_fx.builder_graph(want_w), {"x": x})
    model = fused_fx.builder_graph(hf)
    stats = convert_to_gguf(model, weights, None, accuracy_level=1, approximation=approx)
    a = stats["approximation"]
    assert (a["zero_points"], a["lm_head"], sorted(a["departures"])) == ("refit", "q4", ["layers", "lm_head"])
    assert not any(n.op_type == "ReduceSum" for n in model.graph.node)
    for got, ref in zip(fx.run(model, {"x": x}), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_spec_records_and_refuses():
    assert "gguf_lm_head" not in QuantSpec("int4").to_dict()  # the default's record as before
    assert QuantSpec("int4", gguf_lm_head="q4").to_dict()["gguf_lm_head"] == "q4"
    with pytest.raises(UserError, match="gguf method"):
        QuantSpec("int4", method="rtn", gguf_zero_points="round").check()
    with pytest.raises(UserError, match="zero points"):
        QuantSpec("int4", gguf_zero_points="nearest").check()
    with pytest.raises(UserError, match="lm_head"):
        g.Approximation(lm_head="q2")
