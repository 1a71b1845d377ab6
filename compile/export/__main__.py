"""python -m compile.export --model M --out DIR: export a model to a validated bundle (compile.export.bundle)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from compile.export.graphs import DEFAULT_OPSET, MIN_OPSET
from runtime import cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compile.export",
                                description="Export a model to a bundle: vision / embed / decoder ONNX graphs "
                                            "through Optimum, validated against PyTorch, with tokenizer.json, "
                                            "runtime.json and manifest.json.")
    p.add_argument("--model", required=True,
                   help="smol-llava, gemma-llava, llava, tiny-random-llava, or a model directory (e.g. a folded "
                        "checkpoint)")
    p.add_argument("--out", required=True, type=Path, help="bundle directory (new, empty, or a bundle with --overwrite)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET}; default %(default)s)")
    p.add_argument("--external-data", action="store_true",
                   help="store weights in <graph>.onnx.data files even below 2 GB (always done above)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--system-prompt", metavar="TEXT",
                   help="text the runtime puts ahead of every request (SGM*: 'safety' for the built-in safety prompt, "
                        "runtime.protocol.SAFETY_PROMPT); default none")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from runtime.errors import UserError

    if args.opset < MIN_OPSET:
        raise UserError(f"--opset {args.opset} is below {MIN_OPSET}, the lowest this export supports")
    from compile.export.bundle import export_bundle
    from runtime.protocol import system_prompt_text

    manifest = export_bundle(args.model, args.out, opset=args.opset, external_data=args.external_data,
                             overwrite=args.overwrite, system_prompt=system_prompt_text(args.system_prompt))
    print(f"bundle written to {args.out} ({len(manifest['files'])} files, opset {args.opset})")
    from runtime.compare import Comparison, format_comparison

    for c in manifest["export"]["validation"]:
        print(f"  {format_comparison(Comparison.from_dict(c))}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
