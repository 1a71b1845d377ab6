"""GPTQ int4 blocks for a decoder's MatMuls: 4-bit codes chosen column by column so that the layer's output on
calibration activations, not each weight, stays close (Frantar et al., "GPTQ", 2023).

    hessians(model, feeds)       X^T X of every MatMul input over the calibration feeds, one pass of the graph
    gptq_blocks(w, h, symmetric) the blocks (compile.quantize.gguf.Blocks: codes, scale, integer zero point) of one
                                 weight [N, K] given its input's Hessian [K, K]
    ExactModules                 mixed precision: the Linears that keep their GGUF's exact blocks instead

Why this exists beside ORT's RTN: the embedded models' weights are already 4-bit (GGUF Q4_1 / Q4_K blocks with float
offsets), so rounding them onto MatMulNBits' integer-zero-point grid moves every weight by up to half a step
(+20-33% perplexity, BENCHMARKS.md "Removing the two costs"); GPTQ spends that error where the activations do not
see it. onnxruntime ships a GPTQ (onnxruntime.quantization.neural_compressor), but it runs the whole graph once
per distinct MatMul input (about 120 passes for a 30-layer model), re-rounds its own output with min / max
scales (leaving its grid when a block does not use both end codes), and returns a graph rather than blocks, which
compile.fused needs to put the same weights into its fused decoder. The algorithm below is the paper's reference
code (lazy batch updates of 128 columns, Cholesky of the damped inverse Hessian, group-wise min / max scales fixed
when a group starts), in torch.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from compile.quantize.gguf import QK, Blocks
from compile.quantize.graphs import OFFSETS_SUFFIX, is_lm_head, weight_matmuls
from compile.quantize.spec import LM_HEAD_BLOCK_SIZES
from runtime.errors import UserError

DAMP = 0.01  # fraction of the mean Hessian diagonal added to it (the paper's percdamp)
LAZY = 128  # columns per lazy batch update (a multiple of the block size)


def hessians(model: onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]], inputs: Iterable[str],
             threads: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """(X^T X [K, K] float64 for each named MatMul input, summed over every position of every feed; positions).

    The graph runs once per feed with the inputs added as outputs (written to a temporary file with external
    data, so graphs past protobuf's 2 GB load too)."""
    import onnxruntime as ort

    names = sorted(set(inputs))
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="sgm-gptq-") as tmp:
        path = Path(tmp) / "calibrate.onnx"
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="calibrate.onnx.data", size_threshold=1024)
        del m
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    h: dict[str, np.ndarray] = {}
    positions = 0
    for feed in feeds:
        outs = session.run(names, feed)
        for name, x in zip(names, outs):
            x = x.reshape(-1, x.shape[-1]).astype(np.float32)
            xtx = (x.T @ x).astype(np.float64)  # one feed's sum in float32 (SGEMM), the running sum in float64
            h[name] = h[name] + xtx if name in h else xtx
        positions += int(outs[0].reshape(-1, outs[0].shape[-1]).shape[0])
    return h, positions


def minmax_params(w: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) per row of w [N, 32] on the 4-bit grid: the range with 0 in it over 15 steps, zero point
    round(-min / scale) (symmetric: |max| / 7.5 at zero point 8), as ORT's RTN and GPTQ's reference code fit them."""
    lo, hi = np.minimum(w.min(1), 0), np.maximum(w.max(1), 0)
    if symmetric:
        s = np.maximum(-lo, hi) / 7.5
        return np.where(s > 0, s, 1.0).astype(np.float32), np.full(len(w), 8.0, np.float32)
    s = (hi - lo) / 15.0
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    return s, np.clip(np.rint(-lo / s), 0, 15).astype(np.float32)


def gptq_blocks(w: np.ndarray, h: np.ndarray, symmetric: bool = False, damp: float = DAMP,
                act_order: bool = False, block_size: int = QK) -> Blocks:
    """4-bit blocks of `block_size` along K for the weight w [N, K] whose input has Hessian h [K, K] (GPTQ).

    Each group's scale and zero point are fitted (minmax_params) to the group's weights as they stand when the
    group starts, i.e. after the error of the groups before it has been spread into them; the codes of a column
    are then rounded and the column's error pushed onto the columns after it through the inverse Hessian's
    Cholesky factor (in place, torch: a rank-1 update over all N rows per column). `act_order`: the columns are
    taken in decreasing order of the Hessian's diagonal (the most active inputs first, so later columns absorb
    their error), with every group's scale and zero point fitted up front on the unchanged weights ("static
    groups": the blocks stay contiguous along K, as MatMulNBits needs)."""
    import torch

    n, k = w.shape
    bs = block_size
    if k % bs or LAZY % bs:
        raise ValueError(f"GPTQ blocks of {bs} need K divisible by {bs} and {bs} dividing {LAZY}, got K = {k}")
    h = np.array(h, np.float64, copy=True)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    static = [minmax_params(np.asarray(w[:, j:j + bs], np.float32), symmetric) for j in range(0, k, bs)] \
        if act_order else None
    w = np.where(dead[None, :], 0.0, w)[:, order]
    h = h[np.ix_(order, order)]
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(torch.from_numpy(h))), upper=True)
    u = hinv.to(torch.float32)
    wt = torch.from_numpy(np.array(w.T, np.float32, order="C", copy=True))  # [K, N]: a column of w is a row here
    codes = np.empty((k, n), np.uint8)
    scales = np.empty((k // bs, n), np.float32)
    zps = np.empty((k // bs, n), np.float32)
    s_t = z_t = None
    for i1 in range(0, k, LAZY):
        i2 = min(i1 + LAZY, k)
        w1 = wt[i1:i2]
        err = torch.zeros((i2 - i1, n), dtype=torch.float32)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(order[i1 + i])  # the column of w this step quantizes
            if static is not None:
                g = col // bs
                scales[g], zps[g] = static[g]
                s_t, z_t = torch.from_numpy(scales[g]), torch.from_numpy(zps[g])
            elif col % bs == 0:
                g = col // bs
                scales[g], zps[g] = minmax_params(w1[i:i + bs].T.numpy(), symmetric)
                s_t, z_t = torch.from_numpy(scales[g]), torch.from_numpy(zps[g])
            q = torch.clamp(torch.round(w1[i] / s_t) + z_t, 0, 15)
            codes[col] = q.numpy()
            e = (w1[i] - s_t * (q - z_t)) / u1[i, i]
            w1[i:].addmm_(u1[i, i:, None], e[None], alpha=-1.0)  # rank-1 through GEMM: 8x addr_ here
            err[i] = e
        if i2 < k:
            wt[i2:].addmm_(u[i1:i2, i2:].T, err, alpha=-1.0)
    codes = np.ascontiguousarray(codes.T.reshape(n, k // bs, bs))
    scales, zp = np.ascontiguousarray(scales.T), np.ascontiguousarray(zps.T).astype(np.uint8)
    if symmetric:
        return Blocks(codes, scales, -8.0 * scales, 4)
    return Blocks(codes, scales, -zp.astype(np.float32) * scales, 4, zp)


def relative_output_error(w: np.ndarray, blocks: Blocks, h: np.ndarray) -> float:
    """sqrt(tr(dW H dW^T) / tr(W H W^T)): the layer's output error on the calibration activations, relative
    (as tr(H dW^T dW): one [K, K] SGEMM, since N is the vocabulary for the lm_head)."""
    d = blocks.dequantize() - w
    w = np.asarray(w, np.float32)
    num = float(np.sum(h * (d.T @ d).astype(np.float64)))
    den = float(np.sum(h * (w.T @ w).astype(np.float64)))
    return float(np.sqrt(max(num, 0.0) / max(den, 1e-30)))


class ExactModules:
    """The Linears a mixed GPTQ bundle keeps at their GGUF's exact blocks: those whose node name contains one of
    `patterns`, from `weights` (compile.quantize.gguf.GGUFWeights) with a folded bundle's SGM `row_scales`. They are
    written as the gguf method writes them (8-bit MatMulNBits for Q5_0 / Q6_K / Q8_0, 4-bit plus the block-sum
    offsets for Q4_1 / Q4_K), so the bundle departs from its float weights only where GPTQ's error costs least."""

    def __init__(self, patterns: Iterable[str], weights: Any, row_scales: dict[str, np.ndarray] | None = None):
        self.patterns = tuple(patterns)
        self.weights = weights
        self.row_scales = row_scales

    def __contains__(self, node_name: str) -> bool:
        return any(p in node_name for p in self.patterns)


def quantize_decoder(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], accuracy_level: int = 4,
                     symmetric: bool = False, lm_head: bool = True, threads: int | None = None,
                     act_order: bool = False, exact: ExactModules | None = None,
                     lm_head_block_size: int = QK) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Every Linear of the decoder (lm_head too unless `lm_head` is False) as a 4-bit MatMulNBits with GPTQ blocks
    fitted on `feeds` (prefill feeds of this decoder: compile.quantize.calibration.decoder_feeds), except those in
    `exact` (the GGUF's own blocks); the lm_head's blocks hold `lm_head_block_size` weights (fewer scales to read
    per token over a large vocabulary)."""
    from tqdm import tqdm

    from compile.quantize.gguf import _com_microsoft, gguf_name, matmul_nbits_node, replace_matmul, rewrite_graph

    graph = model.graph
    linears = weight_matmuls(model)
    kept = {n.name for n in linears if exact is not None and n.name in exact}
    if exact is not None and not kept:
        raise UserError(f"no Linear of the decoder matches --exact-modules {' '.join(exact.patterns)}")
    targets = {n.name for n in linears if (lm_head or not is_lm_head(n.name)) and n.name not in kept}
    kept_float = [n.name for n in linears if n.name not in targets and n.name not in kept]
    if not targets:
        raise UserError("the decoder has no MatMul with a constant weight to quantize")
    inits = {t.name: t for t in graph.initializer}
    if lm_head_block_size not in LM_HEAD_BLOCK_SIZES:
        raise UserError(f"the lm_head's GPTQ blocks are {LM_HEAD_BLOCK_SIZES} weights, not {lm_head_block_size}")
    block = {n.name: lm_head_block_size if is_lm_head(n.name) else QK for n in linears}
    odd = [n.name for n in linears if n.name in targets and inits[n.input[1]].dims[0] % block[n.name]]
    if odd:
        raise UserError(f"GPTQ writes blocks of {block[odd[0]]} along the input dimension, and {len(odd)} MatMuls "
                        f"(e.g. {odd[0]}) have an input size that is not a multiple of {block[odd[0]]}; use --method rtn")
    h, positions = hessians(model, feeds, {n.input[0] for n in graph.node if n.name in targets}, threads)
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    dropped: set[str] = set()
    errors: dict[str, float] = {}
    exact_types: dict[str, int] = {}
    folded: list[str] = []
    sums_of: dict[str, str] = {}
    bar = tqdm(total=len(targets) + len(kept), desc="GPTQ int4", unit="linear", leave=False)
    for node in graph.node:
        if node.name in kept:
            bar.update()
            name = gguf_name(node.name)
            replace_matmul(node, exact.weights.blocks(name), inits, exact.row_scales, folded, sums_of, nodes, added,
                           dropped, accuracy_level)
            exact_types[exact.weights.types[name]] = exact_types.get(exact.weights.types[name], 0) + 1
            continue
        if node.name not in targets:
            nodes.append(node)
            continue
        bar.update()
        w = numpy_helper.to_array(inits[node.input[1]]).T
        blocks = gptq_blocks(w, h[node.input[0]], symmetric, act_order=act_order, block_size=block[node.name])
        errors[node.name] = relative_output_error(w, blocks, h[node.input[0]])
        new, tensors = matmul_nbits_node(node, blocks, accuracy_level, None)
        nodes.extend(new)
        added.extend(tensors)
        dropped.add(node.input[1])
    bar.close()
    rewrite_graph(graph, nodes, dropped, added)
    _com_microsoft(model)
    layers = [v for k, v in errors.items() if not is_lm_head(k)]
    heads = [v for k, v in errors.items() if is_lm_head(k)]
    stats = {"op": "MatMulNBits", "quantized": len(errors),
             "calibration": {"feeds": len(feeds), "positions": positions}, "symmetric": symmetric, "damp": DAMP,
             "act_order": act_order, "lm_head_block_size": lm_head_block_size,
             "relative_output_error": {"layers_mean": float(np.mean(layers)) if layers else None,
                                       "layers_max": float(np.max(layers)) if layers else None,
                                       "lm_head": heads[0] if heads else None},
             "kept_float": kept_float}
    if exact is not None:
        stats["exact"] = {"modules": list(exact.patterns), "linears": len(kept), "gguf_types": exact_types,
                          "gguf": str(exact.weights.path), "folded_modules": len(folded)}
    return model, stats


def unpack_matmul_nbits(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> Blocks:
    """The blocks of a MatMulNBits node (4- or 8-bit, optional uint8 zero points), as compile.quantize.gguf.Blocks."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    n, k, bits, bs = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
    nb = -(-k // bs)
    b = numpy_helper.to_array(inits[node.input[1]]).reshape(n, nb, -1)
    codes = b if bits == 8 else np.stack([b & 0x0F, b >> 4], axis=-1).reshape(n, nb, bs)
    scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, nb).astype(np.float32)
    zp = None
    if len(node.input) > 3 and node.input[3]:
        z = numpy_helper.to_array(inits[node.input[3]])
        if z.dtype != np.uint8:
            raise UserError(f"{node.name}: float zero points are not blocks this converter reads")
        zp = z.reshape(n, -1) if bits == 8 else np.stack([z & 0x0F, z >> 4], -1).reshape(n, -1)[:, :nb]
    default = float(1 << (bits - 1))
    offsets = -(zp.astype(np.float32) if zp is not None else default) * scales
    return Blocks(np.ascontiguousarray(codes, np.uint8), scales, offsets.astype(np.float32), bits, zp)


class DecoderBlocks:
    """The MatMulNBits blocks of an int4 bundle's standard decoder by GGUF tensor name (compile.quantize.gguf's
    naming), so compile.fused writes the same weights into its fused decoder (compile.fused.convert_to_gguf).
    `exact` is False: the blocks are a quantization of the checkpoint's float weights, not equal to them."""

    exact = False
    method = "the standard decoder's blocks"

    def __init__(self, decoder: onnx.ModelProto):
        from compile.quantize.gguf import gguf_name

        inits = {t.name: t for t in decoder.graph.initializer}
        self._blocks: dict[str, Blocks] = {}
        for node in decoder.graph.node:
            if node.op_type != "MatMulNBits":
                continue
            linear = node.name.rsplit("_Q", 1)[0]
            name = gguf_name(linear)
            if name is None:
                continue
            blocks = unpack_matmul_nbits(node, inits)
            offsets = inits.get(linear.strip("/").replace("/", "_") + OFFSETS_SUFFIX)
            if offsets is not None:  # an exact GGUF Linear of a mixed bundle: w = d (q - z) + correction
                correction = numpy_helper.to_array(offsets).T
                blocks = Blocks(blocks.codes, blocks.scales, blocks.offsets + correction, blocks.bits)
            self._blocks[name] = blocks
        if not self._blocks:
            raise UserError("the bundle's decoder has no MatMulNBits Linears to copy")

    def blocks(self, name: str) -> Blocks:
        if name not in self._blocks:
            raise UserError(f"the bundle's standard decoder has no quantized weight for {name}")
        return self._blocks[name]


__all__ = ["DecoderBlocks", "ExactModules", "gptq_blocks", "hessians", "quantize_decoder", "relative_output_error"]
