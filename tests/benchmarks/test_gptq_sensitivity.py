"""benchmarks/gptq_sensitivity.py: its variant syntax and the initializer overrides its NLL is scored with."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

_spec = importlib.util.spec_from_file_location(
    "gptq_sensitivity", Path(__file__).resolve().parents[2] / "benchmarks" / "gptq_sensitivity.py")
sens = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sens)


def test_variant_syntax():
    assert sens.parse_variant("a=self_attn/k_proj,layers.0/@64") == ("a", ("self_attn/k_proj", "layers.0/"), 64)
    assert sens.parse_variant("b=mlp/") == ("b", ("mlp/",), 32)
    assert sens.parse_variant("head only=@128") == ("head only", (), 128)
    for bad in ("nothing", "a=mlp/@48", "a=mlp/@x"):
        with pytest.raises(SystemExit, match="expected NAME=PATTERN"):
            sens.parse_variant(bad)


def test_mean_nll_scores_the_overridden_weights(tmp_path: Path):
    """x -> MatMul W -> logits: with W overridden by zeros every token is equally likely, NLL = log V."""
    rng = np.random.default_rng(0)
    k, v = 8, 16
    w = rng.normal(size=(k, v)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, v])],
                              [numpy_helper.from_array(w, "w")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.normal(size=(1, 5, k)).astype(np.float32)
    ids = np.array([1, 2, 3, 4, 5])
    z = (x[0] @ w)[:-1].astype(np.float64)
    want = float(np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(4), ids[1:]]))
    assert sens.mean_nll(str(path), "logits", [({"x": x}, ids)], {}) == pytest.approx(want, rel=1e-5)
    np.save(tmp_path / "zeros.npy", np.zeros_like(w))
    got = sens.mean_nll(str(path), "logits", [({"x": x}, ids)], {"w": tmp_path / "zeros.npy"})
    assert got == pytest.approx(np.log(v), rel=1e-6)
