"""Quantize a bundle: ONNX Runtime weight-only int4 / int8 for CPUs; fp16 and Q/DQ graphs for TensorRT.

    python -m compile.quantize --bundle build/bundle --out build/bundle-int4 --precision int4

Precisions (the source must be a float32 bundle from compile.export):
- int4, method gguf (auto for smol-llava, whose language model is a Q4_1 GGUF; asked for on gemma-llava, a Q4_K_M
  GGUF, when the bundle holds that GGUF's weights): the GGUF's own blocks as MatMulNBits / GatherBlockQuantized,
  exact (compile.quantize.gguf; Q4_K 4-bit, Q5_0 / Q6_K / Q8_0 8-bit); a folded bundle's factors go into the scales;
- int4, method rtn (auto for other models): decoder MatMuls -> MatMulNBits via ORT's quantizer (4-bit blocks of
  `block_size` along the input dimension, asymmetric, `accuracy_level` 4 = int8 activations inside the kernel),
  lm_head included unless --no-lm-head, the embedding table -> GatherBlockQuantized unless --no-embeddings;
- int4, method gptq: decoder MatMuls -> 4-bit MatMulNBits blocks of 32 with integer zero points, the codes chosen
  by GPTQ on the bundle's own calibration activations (compile.quantize.gptq; 128 prompts by default), the
  embedding table as the GGUF's exact 8-bit one where the model has a GGUF; `exact_modules` keep the GGUF's exact
  blocks for the Linears they name (mixed precision: auto for gemma-llava's own weights, with its recipe's
  modules, compile.recipes; onnxruntime-genai's speed within the gate, docs/quantization.md "Mixed GPTQ");
- int8: decoder MatMuls -> MatMulNBits with 8-bit blocks (weight-only, the default), or quantize_dynamic
  per-channel with reduce_range (--int8-mode dynamic; the AVX2-without-VNNI caveat of FACTS.md);
- fp16: all three graphs in float16 (TensorRT / CUDA);
- int4-qdq: fp16 graphs, decoder weights as symmetric blockwise int4 DequantizeLinear -> MatMul (TensorRT's
  int4 weight-only form, the layout AWQ produces): the GGUF's own blocks for smol-llava (method gguf, plus a
  block-sum offsets MatMul), RTN scales otherwise;
- int8-qdq: int8 Q/DQ on decoder MatMul activations and weights (TensorRT explicit INT8), activation
  ranges calibrated on decoder inputs the source bundle computes itself.
Row scaling (the SGM fold) commutes with all of these weight quantizations: see compile.quantize.qfold.
Each method is a class registered by name (compile.quantize.registry, compile.quantize.methods); `quantizer`
picks the one a spec asks for.

The output is a bundle like its source (same tokenizer, runtime.json with dtype float16 for fp16 graphs)
whose manifest records `precision` (method, settings, per-graph sizes and node counts), `source` (the
float32 bundle's fingerprint) and `check` (teacher-forced agreement with the source, compile.quantize.check).
"""
from __future__ import annotations

import os
from typing import Any

from compile.quantize import methods, qfold  # noqa: F401  (each registers its methods)
from compile.quantize.derive import derive_bundle
from compile.quantize.registry import METHODS, quantizer
from compile.quantize.spec import FLOAT16, INT8_MODES, METHOD_CHOICES, PRECISIONS, TARGETS, QuantSpec
from runtime.bundle import load_bundle
from runtime.errors import UserError


def quantize_bundle(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, spec: QuantSpec,
                    overwrite: bool = False, check: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Write the `spec.precision` version of a float32 bundle to `out_dir`; returns its manifest.

    With `check`, the new bundle is compared with its source (teacher-forced, compile.quantize.check) and the
    result recorded in the manifest as `check`.
    """
    spec.check()
    src = load_bundle(bundle_dir)
    if src.precision != "fp32":
        raise UserError(f"{bundle_dir} is already a {src.precision} bundle; quantize the float32 bundle it came from "
                        f"({src.manifest.get('source', {}).get('path', 'see its manifest')})")
    if src.manifest.get("detoxified_in_graph"):
        raise UserError(f"{bundle_dir} was detoxified in its graph by compile.qfold; quantize its float32 source "
                        "and apply compile.qfold to the result (the fold commutes with quantization)")
    dtype = "float16" if spec.precision in FLOAT16 else None

    def measure(tmp: Path) -> dict[str, Any]:
        from compile.quantize.check import agreement, check_items
        from runtime.generate import BundleGenerator

        # a TensorRT graph is evaluated as written: ORT's own fusions would turn its Q/DQ MatMuls into ORT's
        # integer kernels (int8 activations), which is not what TensorRT computes
        optimization = "disable" if TARGETS[spec.precision] == "tensorrt" else "all"
        new = BundleGenerator.open(tmp, threads=threads, optimization=optimization)
        result = agreement(BundleGenerator.open(src.root, threads=threads), new, check_items()).to_dict()
        return {**result, "evaluated_with": f"onnxruntime CPU, graph optimization {optimization}"}

    return derive_bundle(src.root, out_dir, quantizer(src, spec), dtype=dtype, overwrite=overwrite,
                         after=measure if check else None, inputs=[spec.gguf])


__all__ = ["INT8_MODES", "METHODS", "METHOD_CHOICES", "PRECISIONS", "QuantSpec", "TARGETS", "quantize_bundle"]
