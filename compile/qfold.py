"""Detoxify a (quantized) bundle in its graph: the CLI over compile.quantize.qfold.qfold_bundle.

    python -m compile.qfold --bundle build/bundle-int4 --experts build/experts --out build/bundle-int4-detox
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from compile.quantize.qfold import KEY, qfold_bundle
from runtime import cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compile.qfold", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="bundle to detoxify (quantized or float)")
    p.add_argument("--experts", required=True, type=Path, help="experts artifact made for the bundle's model")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    manifest = qfold_bundle(args.bundle, args.experts, args.out, args.overwrite)
    r = manifest[KEY]
    print(f"folded {r['units_scaled']} units of {r['modules']} modules into the scales of {args.out} ({r['ops']})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
