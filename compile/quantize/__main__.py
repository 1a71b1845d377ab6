"""python -m compile.quantize --bundle DIR --out DIR --precision int4|int8|fp16|int4-qdq|int8-qdq"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from compile.quantize import INT8_MODES, METHOD_CHOICES, PRECISIONS, QuantSpec, quantize_bundle
from runtime import cli
from runtime.compare import Comparison, format_comparison


def parser() -> argparse.ArgumentParser:
    d = QuantSpec("int4")
    p = argparse.ArgumentParser(prog="python -m compile.quantize",
                                description="Quantize a float32 bundle (ORT int4/int8 for CPUs; fp16 and Q/DQ graphs "
                                            "for TensorRT), recorded in the new bundle's manifest.")
    p.add_argument("--bundle", required=True, type=Path, help="float32 bundle (python -m compile.export)")
    p.add_argument("--out", required=True, type=Path, help="new bundle directory")
    p.add_argument("--precision", required=True, choices=PRECISIONS)
    p.add_argument("--block-size", type=int, default=d.block_size, help="weights per block (default %(default)s)")
    p.add_argument("--accuracy-level", type=int, default=d.accuracy_level,
                   help="MatMulNBits compute type: 4 int8 (default), 1 fp32, 0 unset")
    p.add_argument("--symmetric", action="store_true", help="symmetric blocks (no zero points; always for *-qdq)")
    p.add_argument("--no-lm-head", dest="lm_head", action="store_false", help="keep lm_head in float")
    p.add_argument("--no-embeddings", dest="embeddings", action="store_false",
                   help="keep the embedding table in float (int4 quantizes it by default)")
    p.add_argument("--int8-mode", choices=INT8_MODES, default=d.int8_mode)
    p.add_argument("--calibration-items", type=int,
                   help="calibration prompts of int8-qdq (default 16) and gptq (default 128)")
    p.add_argument("--skip-modules", nargs="*", default=(),
                   help="int8-qdq: MatMuls whose node name contains one of these stay float (e.g. down_proj)")
    p.add_argument("--keep-fp32", nargs="*", default=(), help="op types kept in float32 in fp16 graphs")
    p.add_argument("--method", choices=METHOD_CHOICES, default=d.method,
                   help="int4: gguf (exact GGUF blocks), rtn (ORT's quantizer) or gptq (calibrated integer-zero-point "
                        "blocks, compile.quantize.gptq); auto: gguf for smol-llava, the recipe's mixed gptq for "
                        "gemma-llava (compile.recipes), rtn otherwise")
    p.add_argument("--act-order", action="store_true",
                   help="gptq: quantize columns in decreasing order of input activity (static groups)")
    p.add_argument("--exact-modules", nargs="+", default=(), metavar="PATTERN",
                   help="gptq: Linears whose node name contains one of these keep the GGUF's exact blocks (mixed "
                        "precision; e.g. self_attn/ layers.0/)")
    p.add_argument("--lm-head-block-size", type=int, default=d.lm_head_block_size,
                   help="gptq: weights per lm_head block (default %(default)s)")
    p.add_argument("--gguf", type=Path,
                   help="GGUF for --method gguf (default: the bundle's model's, from the asset cache)")
    from compile.quantize.gguf import add_approximation_args

    add_approximation_args(p)
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the comparison with the source")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for the check")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    spec = QuantSpec(args.precision, block_size=args.block_size, accuracy_level=args.accuracy_level,
                     symmetric=args.symmetric, lm_head=args.lm_head, embeddings=args.embeddings,
                     int8_mode=args.int8_mode, calibration_items=args.calibration_items,
                     skip_modules=tuple(args.skip_modules),
                     keep_fp32=tuple(args.keep_fp32), method=args.method,
                     gguf=str(args.gguf) if args.gguf else None, gguf_zero_points=args.gguf_zero_points,
                     gguf_lm_head=args.gguf_lm_head, act_order=args.act_order,
                     exact_modules=tuple(args.exact_modules), lm_head_block_size=args.lm_head_block_size)
    manifest = quantize_bundle(args.bundle, args.out, spec, overwrite=args.overwrite, check=args.check,
                               threads=args.threads)
    print(f"{args.precision} bundle written to {args.out}")
    for graph, g in manifest["precision"]["graphs"].items():
        if isinstance(g, dict):
            what = g.get("op") or g.get("dtype") or ", ".join(f"{k} x{v}" for k, v in g.get("converted", {}).items())
            print(f"  {graph:<8} {what:<28} {g['bytes_before'] / 2**20:8.1f} MiB -> "
                  f"{g['bytes_after'] / 2**20:8.1f} MiB")
        else:
            print(f"  {graph:<8} {g}")
    c = manifest.get("check")
    if c:
        print(f"  {format_comparison(Comparison.from_dict(c))}; mean NLL {c['mean_nll_source']:.3f} -> "
              f"{c['mean_nll_new']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
