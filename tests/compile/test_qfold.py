"""Folding commutes with weight quantization, and compile.quantize.qfold detoxifies a quantized bundle without
re-quantizing it.

The Must-show test: on tiny-random-llava, quantize(export(fold(model))) and qfold(quantize(export(model)))
hold bitwise identical MatMulNBits codes and zero points, with scales equal within 1e-6 relative, for int4
asymmetric / symmetric, int8 and the int4 Q/DQ form. On matrices of the default's size the same holds except
where ORT's rounding input sits on a .5 tie (fold-then-quantize starts from the already-rounded float32
folded weights, so a tie may fall either way): every differing code is checked to be such a tie, one step off.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.experts import build_experts, load_experts, model_info, model_units, save_experts
from calib.factors import factor_spec
from calib.intervention import row_scales
from compile.quantize.qfold import KEY, fold_graph, qfold_bundle
from compile.quantize import QuantSpec, quantize_bundle
from compile.quantize.ort_cpu import nbits
from runtime.errors import UserError
from runtime.generate import BundleGenerator

CALIB = {"sha256": "0" * 64, "n_samples": 0, "note": "hand-made factors for tests"}
REPO = Path(__file__).resolve().parents[2]
VARIANTS = {"int4": QuantSpec("int4", embeddings=False), "int4-sym": QuantSpec("int4", symmetric=True, embeddings=False),
            "int8": QuantSpec("int8"), "int4-qdq": QuantSpec("int4-qdq")}


@pytest.fixture(scope="module")
def paths(tiny_llava, random_experts, tmp_path_factory) -> dict[str, Path]:
    """The undetoxified bundle, experts, the folded checkpoint's bundle, and every quantized pair."""
    from compile.export.bundle import export_bundle
    from compile.fold import fold_to_dir

    root = tmp_path_factory.mktemp("qfold")
    experts = save_experts(random_experts(tiny_llava, seed=0), root / "experts")
    export_bundle("tiny-random-llava", root / "plain")
    fold_to_dir("tiny-random-llava", experts, root / "folded-ckpt")
    export_bundle(str(root / "folded-ckpt"), root / "folded")
    out = {"experts": experts, "plain": root / "plain", "folded": root / "folded"}
    for name, spec in VARIANTS.items():
        quantize_bundle(root / "folded", root / f"fold-then-{name}", spec, check=False)
        quantize_bundle(root / "plain", root / name, spec, check=False)
        qfold_bundle(root / name, experts, root / f"{name}-then-fold")
        out[name], out[f"fold-then-{name}"], out[f"{name}-then-fold"] = (root / name, root / f"fold-then-{name}",
                                                                         root / f"{name}-then-fold")
    qfold_bundle(root / "plain", experts, root / "plain-then-fold")
    out["plain-then-fold"] = root / "plain-then-fold"
    return out


def _tensors(bundle: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(bundle / "decoder.onnx"))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _raw(bundle: Path) -> dict[str, bytes]:
    model = onnx.load(str(bundle / "decoder.onnx"))
    return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


@pytest.mark.parametrize("variant", ["int4", "int4-sym", "int8"])
def test_fold_then_quantize_equals_quantize_then_fold(paths, variant: str):
    a, b = _tensors(paths[f"fold-then-{variant}"]), _raw(paths[f"{variant}-then-fold"])
    b_arrays = _tensors(paths[f"{variant}-then-fold"])
    assert a.keys() == b_arrays.keys()
    codes = [k for k in a if k.endswith(("_Q4", "_Q8"))]
    zps = [k for k in a if "zero_points" in k]
    scales = [k for k in a if k.endswith("scales")]
    assert len(codes) >= 14 and len(scales) == len(codes)  # 2 layers x 7 Linears + lm_head
    assert (len(zps) == len(codes)) == (variant in ("int4", "int8"))
    changed = 0
    unfolded = _tensors(paths[variant])
    for k in codes + zps:
        assert a[k].tobytes() == b[k], f"{variant}: integer tensor {k} differs"
    for k in scales:
        np.testing.assert_allclose(b_arrays[k], a[k], rtol=1e-6, atol=0, err_msg=f"{variant}: scales {k}")
        changed += int(not np.array_equal(a[k], unfolded[k]))
    assert changed == 6  # the fold changed exactly the MLP scales (3 modules x 2 layers)


def _logits(bundle: Path) -> np.ndarray:
    gen = BundleGenerator.open(bundle, threads=1)
    x = gen.backend.embed(np.array([[5, 6, 7, 8, 9, 10]], np.int64))
    return gen.backend.decode(x, np.ones((1, 6), np.int64), np.arange(6)[None], gen.backend.empty_cache(1),
                              last_only=False)[0]


def test_fp16_qdq_graph_commutes_up_to_fp16_rounding(paths):
    """TensorRT's int4 Q/DQ graph is float16: folding before the conversion rounds the folded weights to
    float16 (small alphas reach float16's subnormals), so a few codes and scales differ; qfold's model is as
    close to the float32 detoxified model as the re-quantized one."""
    a, b = _tensors(paths["fold-then-int4-qdq"]), _tensors(paths["int4-qdq-then-fold"])
    codes = [k for k in a if k.endswith("_Q4")]
    differ = sum(int((a[k] != b[k]).sum()) for k in codes)
    assert differ < 0.02 * sum(a[k].size for k in codes)
    ours, theirs, exact = (_logits(paths[k]) for k in ("int4-qdq-then-fold", "fold-then-int4-qdq", "folded"))
    # both approximate the float32 detoxified model; folding into the scales is no worse than re-quantizing
    assert np.abs(ours - exact).max() <= 1.25 * np.abs(theirs - exact).max()


def test_qfold_of_the_float_bundle_equals_the_exported_fold(paths):
    a, b = _tensors(paths["folded"]), _tensors(paths["plain-then-fold"])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-8, err_msg=k)


def test_qfolded_int4_computes_the_detoxified_int4_model(paths):
    ours = BundleGenerator.open(paths["int4-then-fold"], threads=1)
    ref = BundleGenerator.open(paths["fold-then-int4"], threads=1)
    plain = BundleGenerator.open(paths["int4"], threads=1)
    x = ours.backend.embed(np.array([[5, 6, 7, 8, 9, 10]], np.int64))
    args = (np.ones((1, 6), np.int64), np.arange(6)[None])
    mine = ours.backend.decode(x, *args, ours.backend.empty_cache(1), last_only=False)[0]
    theirs = ref.backend.decode(x, *args, ref.backend.empty_cache(1), last_only=False)[0]
    before = plain.backend.decode(x, *args, plain.backend.empty_cache(1), last_only=False)[0]
    assert np.abs(mine - theirs).max() < 1e-5
    assert np.abs(mine - before).max() > 100 * np.abs(mine - theirs).max()  # the detoxification is really there
    manifest = json.loads((paths["int4-then-fold"] / "manifest.json").read_text())
    assert manifest[KEY]["ops"] == {"MatMulNBits": 6} and manifest[KEY]["units_scaled"] > 0
    assert manifest["precision"]["name"] == "int4" and manifest["source"]["precision"] == "int4"
    assert plain.describe()["precision"].startswith("int4 (") and plain.describe()["dtype"] == "float32"


def _single(weight: np.ndarray) -> onnx.ModelProto:
    k, n = weight.shape
    g = helper.make_graph([helper.make_node("MatMul", ["A", "W"], ["Y"], name="/m/layers.0/mlp/up_proj/MatMul")], "g",
                          [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
                          [numpy_helper.from_array(weight, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(weight: np.ndarray, symmetric: bool) -> dict[str, np.ndarray]:
    logging.disable(logging.WARNING)
    model, _ = nbits(_single(weight), 4, 32, 4, symmetric, True)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _codes(packed: np.ndarray) -> np.ndarray:
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    out[..., 0::2], out[..., 1::2] = packed & 15, packed >> 4
    return out


@pytest.mark.parametrize("symmetric", [False, True])
def test_default_sized_matrices_commute_except_at_rounding_ties(symmetric: bool):
    """An up_proj-sized weight (576 x 1536) on a 4-bit grid, like the default's, where ties are common."""
    rng = np.random.default_rng(1)
    k, n = 576, 1536
    grid = rng.integers(0, 16, (k, n)).astype(np.float32)
    weight = ((grid - 7.3) * rng.uniform(0.002, 0.02, (k // 32, 1, n)).repeat(32, 0).reshape(k, n)).astype(np.float32)
    alpha = np.where(rng.random(n) < 0.5, rng.uniform(0.05, 1.0, n), 1.0).astype(np.float32)
    before = _quantized(weight, symmetric)
    after = _quantized((weight * alpha[None, :]).astype(np.float32), symmetric)
    folded, _ = fold_graph(_single_nbits(before, weight.shape, symmetric), {"layers.0.mlp.up_proj": alpha})
    q = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    (ck,) = [x for x in q if x.endswith("_Q4")]
    (sk,) = [x for x in q if x.endswith("_scales")]
    np.testing.assert_allclose(q[sk], after[sk], rtol=1e-6, atol=0)
    c_fold, c_after = _codes(q[ck]), _codes(after[ck])
    diff = np.argwhere(c_fold != c_after)
    # ORT's rounding input for each code, from the unfolded quantization: w / scale + zero point
    scale = before[sk].reshape(n, -1)
    zp = (_codes(before[[x for x in before if "zero_points" in x][0]]).reshape(n, -1)[:, : k // 32].astype(np.float64)
          if not symmetric else np.full((n, k // 32), 8.0))
    w = weight.T.reshape(n, k // 32, 32).astype(np.float64)
    v = w / scale[..., None] + zp[..., None]
    tie = np.abs(v - np.floor(v) - 0.5) < 1e-4
    assert c_fold.size == n * k
    for i, b, j in diff:
        assert tie[i, b, j], f"code ({i}, {b}, {j}) differs away from a rounding tie (v = {v[i, b, j]})"
        assert abs(int(c_fold[i, b, j]) - int(c_after[i, b, j])) == 1
    assert len(diff) <= int(tie.sum()) and len(diff) < 1e-3 * c_fold.size
    if not symmetric:  # a zero point round(-min(block, 0) / scale) may flip only at a tie too
        zk = [x for x in q if "zero_points" in x][0]
        z = -np.minimum(w.min(-1), 0.0) / scale
        for i, b in np.argwhere(_codes(q[zk]).reshape(n, -1)[:, : k // 32] != _codes(after[zk]).reshape(n, -1)[:, : k // 32]):
            assert abs(z[i, b] - np.floor(z[i, b]) - 0.5) < 1e-4, "a zero point differs away from a tie"


def _single_nbits(tensors: dict[str, np.ndarray], shape: tuple[int, int], symmetric: bool) -> onnx.ModelProto:
    k, n = shape
    names = [x for x in tensors if x.endswith("_Q4")] + [x for x in tensors if x.endswith("_scales")]
    if not symmetric:
        names += [x for x in tensors if "zero_points" in x]
    node = helper.make_node("MatMulNBits", ["A", *names], ["Y"], name="/m/layers.0/mlp/up_proj/MatMul_Q4",
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=32)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
                          [numpy_helper.from_array(tensors[x], x) for x in names])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_refusals(paths, tiny_llava, tmp_path: Path):
    with pytest.raises(UserError, match="already detoxified"):
        qfold_bundle(paths["int4-then-fold"], paths["experts"], tmp_path / "twice")
    with pytest.raises(UserError, match="already detoxified"):
        qfold_bundle(paths["folded"], paths["experts"], tmp_path / "twice")
    other = build_experts(model_units(tiny_llava), {k: np.full(w, 0.9) for k, w in model_units(tiny_llava)},
                          factor_spec("sgm", strength=1.0),
                          {**model_info(tiny_llava), "mlp_weights_sha256": "f" * 64}, CALIB)
    with pytest.raises(UserError, match="experts were made for"):
        qfold_bundle(paths["int4"], save_experts(other, tmp_path / "other"), tmp_path / "x")
    with pytest.raises(UserError, match="is already a int4 bundle"):
        quantize_bundle(paths["int4"], tmp_path / "again", QuantSpec("int8"), check=False)
    with pytest.raises(UserError, match="detoxified in its graph"):
        quantize_bundle(paths["plain-then-fold"], tmp_path / "q", QuantSpec("int4"), check=False)
    assert not any(p.name in ("twice", "x", "again", "q") for p in tmp_path.iterdir())


def test_graph_problems_are_named():
    scales = {"layers.0.mlp.up_proj": np.full(4, 0.5, np.float32), "layers.0.mlp.down_proj": np.ones(3, np.float32)}
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    node = helper.make_node("MatMul", ["A", "W"], ["Y"], name="/m/layers.0/mlp/up_proj/MatMul")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])], [w])
    with pytest.raises(UserError, match=r"no MatMul for 1 module\(s\) \(first: layers.0.mlp.down_proj\)"):
        fold_graph(helper.make_model(g), scales)
    shared = helper.make_graph([node, helper.make_node("MatMul", ["A", "W"], ["Z"], name="/other/MatMul")], "g",
                               [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, 3])],
                               [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])], [w])
    with pytest.raises(UserError, match="shared by 2 nodes"):
        fold_graph(helper.make_model(shared), {"layers.0.mlp.up_proj": scales["layers.0.mlp.up_proj"]})
    with pytest.raises(UserError, match="does not have 5 output channels"):
        fold_graph(helper.make_model(g), {"layers.0.mlp.up_proj": np.ones(5, np.float32)})


def test_cli(paths, tmp_path: Path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "compile.qfold", "--bundle", str(paths["int8"]), "--experts",
                           str(paths["experts"]), "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "folded" in done.stdout and (out / "manifest.json").is_file()
    again = subprocess.run([sys.executable, "-m", "compile.qfold", "--bundle", str(paths["int8"]), "--experts",
                            str(paths["experts"]), "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 2 and "already exists" in again.stderr
    experts = load_experts(paths["experts"])
    assert set(row_scales(experts)) <= {k for k, _ in experts.units}
    shutil.rmtree(out)
