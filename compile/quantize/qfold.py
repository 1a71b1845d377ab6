"""Detoxify a bundle in its graph: scale the weights' quantization scales, never re-quantize.

    python -m compile.qfold --bundle build/bundle-int4 --experts build/experts --out build/bundle-int4-detox

The SGM intervention scales output channel i of every hooked MLP Linear by alpha_i (calib.intervention.
row_scales, the same vectors the hooks and compile.fold use). Every weight format here quantizes along
the input dimension per output channel, with w = (q - zp) * scale and zero points in code units, so the
row scaling moves into the scales exactly and leaves codes and zero points alone:
- MatMulNBits (int4/int8 blocks, ORT or GGUF-exact): scales [N, blocks] *= alpha[:, None]; a GGUF-converted
  Linear's companion offsets MatMul [K / 32, N] (compile.quantize.gguf) has its columns scaled too;
- DequantizeLinear -> MatMul (blockwise axis 0, scales [K / block, N], or per-channel axis 1, scales [N]): scales *= alpha;
- MatMul with a float weight [K, N] (an unquantized bundle): columns *= alpha.
Quantizing a folded checkpoint gives the same codes and zero points with scales multiplied by alpha
(tests/compile/test_qfold.py checks it with ORT's quantizer), so this equals quantizing the detoxified model.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from compile.quantize.derive import copy_graph, derive_bundle
from compile.quantize.graphs import OFFSETS_SUFFIX, graph_bytes, load_graph, save_graph, unit_of
from compile.quantize.registry import QuantMethod, register
from runtime.artifacts import MANIFEST, sha256_file
from runtime.bundle import GRAPHS, Bundle
from runtime.errors import UserError

KEY = "detoxified_in_graph"


def _rows(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """MatMulNBits scales [N * blocks] or [N, blocks]: row n times a[n]."""
    return (v.reshape(a.shape[0], -1) * a[:, None].astype(v.dtype)).reshape(v.shape)


def _columns(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """[K or K / block, N]: column n times a[n]."""
    return v * a[None, :].astype(v.dtype)


def _channels(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Per-output-channel scales [N]."""
    return v * a.astype(v.dtype)


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def _replace(graph: onnx.GraphProto, old: onnx.TensorProto, value: np.ndarray) -> None:
    new = numpy_helper.from_array(value.astype(numpy_helper.to_array(old).dtype, copy=False), old.name)
    old.CopyFrom(new)


def _scale_tensor(name: str, inits: Mapping[str, onnx.TensorProto], graph: onnx.GraphProto, alpha: np.ndarray,
                  fn: Any, uses: Counter, what: str) -> None:
    if name not in inits:
        raise UserError(f"{what}: its scales {name!r} are not a constant of the graph; cannot fold")
    if uses[name] != 1:
        raise UserError(f"{what}: its scales {name!r} are shared by {uses[name]} nodes; folding would scale the "
                        "others too")
    value = numpy_helper.to_array(inits[name])
    _replace(graph, inits[name], fn(value, alpha))


def fold_graph(model: onnx.ModelProto, scales: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Fold per-unit row scales into the decoder graph in place; every key must be found exactly once."""
    graph = model.graph
    inits = _initializers(graph)
    uses = Counter(i for n in graph.node for i in n.input)
    producers = {o: n for n in graph.node for o in n.output}
    found: Counter = Counter()
    ops: Counter = Counter()
    for node in graph.node:
        key = unit_of(node.name)
        if key is None or key not in scales or node.op_type not in ("MatMulNBits", "MatMul"):
            continue
        alpha = np.asarray(scales[key], dtype=np.float32)
        what = f"{node.name} ({key})"
        if node.name.endswith(OFFSETS_SUFFIX):  # a GGUF-converted Linear's block offsets [K / 32, N]: columns
            _scale_tensor(node.input[1], inits, graph, alpha, _columns, uses, what)
            ops["offsets MatMul"] += 1
            continue
        if node.op_type == "MatMulNBits":
            n = next(a.i for a in node.attribute if a.name == "N")
            if n != alpha.shape[0]:
                raise UserError(f"{what}: N = {n} output channels, the experts give {alpha.shape[0]} factors")
            _scale_tensor(node.input[2], inits, graph, alpha, _rows, uses, what)
            ops["MatMulNBits"] += 1
        elif node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            if w.ndim != 2 or w.shape[1] != alpha.shape[0]:
                raise UserError(f"{what}: weight {w.shape} does not have {alpha.shape[0]} output channels")
            _scale_tensor(node.input[1], inits, graph, alpha, _columns, uses, what)
            ops["MatMul (float weight)"] += 1
        else:
            dq = producers.get(node.input[1])
            if dq is None or dq.op_type != "DequantizeLinear":
                raise UserError(f"{what}: its weight is neither a constant, MatMulNBits nor DequantizeLinear; cannot fold")
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            q = numpy_helper.to_array(inits[dq.input[0]]) if dq.input[0] in inits else None
            if q is None or q.ndim != 2 or q.shape[1] != alpha.shape[0]:
                raise UserError(f"{what}: quantized weight does not have {alpha.shape[0]} output channels")
            scale = numpy_helper.to_array(inits[dq.input[1]])
            if axis % 2 == 0 and scale.ndim == 2:  # blockwise along K: [K / block, N]
                fn = _columns
            elif axis % 2 == 1 and scale.ndim == 1:  # per output channel: [N]
                fn = _channels
            else:
                raise UserError(f"{what}: DequantizeLinear with axis {axis} and scales {scale.shape} is per-tensor "
                                "or along the output channels; a row scaling cannot be folded into it")
            _scale_tensor(dq.input[1], inits, graph, alpha, fn, uses, what)
            ops["DequantizeLinear"] += 1
        found[key] += 1
    missing = [k for k in scales if found[k] == 0]
    twice = [k for k, c in found.items() if c > 1]
    if missing or twice:
        raise UserError("the decoder graph does not match the experts: "
                        + (f"no MatMul for {len(missing)} module(s) (first: {missing[0]})" if missing else "")
                        + ("; " if missing and twice else "") + (f"{twice[0]} appears twice" if twice else ""))
    units = int(sum(int((np.asarray(s) != 1).sum()) for s in scales.values()))
    return model, {"modules": len(found), "units_scaled": units, "ops": dict(ops)}


def _check_model(src: Bundle, experts: Any) -> None:
    model = src.manifest.get("model", {})
    if model.get("folded") or src.manifest.get(KEY):
        raise UserError(f"{src.root} is already detoxified ({'folded checkpoint' if model.get('folded') else KEY}); "
                        "folding again would apply the factors twice")
    want = experts.model.get("mlp_weights_sha256")
    have = model.get("mlp_weights_sha256")
    if want and have and want != have:
        raise UserError(f"the experts were made for {experts.model.get('name')} (hooked weights "
                        f"{want[:12]}...), this bundle comes from {model.get('name')} ({have[:12]}...); "
                        "use experts built for this model")


@register("qfold", default=False)
class QFold(QuantMethod):
    """Detoxify any bundle in its graph: the experts' row scales folded into the decoder's (quantization) scales."""

    def __init__(self, experts_dir: str | Path):
        from compile.fold import experts_scales

        self.experts_dir = Path(experts_dir)
        self.experts, self.scales = experts_scales(experts_dir)

    def __call__(self, src: Bundle, out: Path) -> dict[str, Any]:
        _check_model(src, self.experts)
        rel = src.spec.graphs["decoder"]
        model, report = fold_graph(load_graph(src.graph_path("decoder")), self.scales)
        save_graph(model, out / rel)
        for graph in GRAPHS:
            if graph != "decoder":
                copy_graph(src, graph, out)
        return {KEY: {**report, "bytes": graph_bytes(out, rel),
                      "experts": {"path": str(self.experts_dir.resolve()),
                                  "manifest_sha256": sha256_file(self.experts_dir / MANIFEST),
                                  "model": dict(self.experts.model), "method": self.experts.spec.to_dict()}}}


def qfold_bundle(bundle_dir: str | Path, experts_dir: str | Path, out_dir: str | Path,
                 overwrite: bool = False) -> dict[str, Any]:
    """Write `bundle_dir` detoxified by `experts_dir` (decoder scales folded) to `out_dir`; returns its manifest."""
    return derive_bundle(bundle_dir, out_dir, QFold(experts_dir), overwrite=overwrite, inputs=[experts_dir])
