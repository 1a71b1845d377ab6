"""Run the whole path for one model: calibrate -> fold -> export -> quantize -> engine -> evaluate.

    python -m compile.build --model smol-llava --out build/smol-llava

Each stage writes its own artifact directory under --out (experts/, detoxified/, bundle/, report/), each
with a manifest.json that records what it was made from. Stages land one by one; the plan printed by
--dry-run says which are available in this version.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from runtime import cli
from runtime.errors import UserError


@dataclass(frozen=True)
class Stage:
    name: str
    output: str
    what: str
    module: str  # where the stage lives; it is available once this module exists


STAGES = (
    Stage("calib", "experts/", "score MLP units on the calibration split, write SGM factors", "calib.experts"),
    Stage("fold", "detoxified/", "fold the factors into the MLP weights (row scaling), checked against hooks",
          "compile.fold"),
    Stage("export", "bundle/", "export vision / embed / decoder graphs through Optimum, validated vs PyTorch",
          "compile.export"),
    Stage("quantize", "bundle-<precision>/", "ONNX Runtime int8 / int4 weight-only quantization",
          "compile.quantize"),
    Stage("engine", "engines/", "TensorRT engines (built on the target device)", "compile.engine"),
    Stage("evaluate", "report/", "MM-TOXIC-QA on the compiled bundle, report and regression gate",
          "runtime.mmtoxicqa"),
)


def available(stage: Stage) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(stage.module) is not None
    except ModuleNotFoundError:
        return False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compile.build", description=__doc__.split("\n")[0],
                                epilog="Stages: " + "; ".join(f"{s.name} -> {s.output} ({s.what})" for s in STAGES))
    p.add_argument("--model", default="smol-llava",
                   help="smol-llava (embedded default), llava (llava-hf/llava-1.5-7b-hf), tiny-random-llava, "
                        "or a path to a smol-llava / llava-hf directory")
    p.add_argument("--out", type=Path, help="output directory (one sub-directory per stage)")
    g = p.add_argument_group("calib: toxic experts and SGM factors")
    g.add_argument("--experts", type=Path, help="reuse an existing experts/ artifact instead of calibrating")
    g.add_argument("--method", choices=("sgm", "aura", "det0", "damp"), default="sgm",
                   help="factor rule: SGM expertise-weighted soft suppression (default) or a baseline")
    g.add_argument("--strength", type=float, default=1.0, help="SGM strength s in alpha = 1 - s(2 AUROC - 1)")
    g.add_argument("--threshold", type=float, default=0.5, help="only units with AUROC above this are suppressed")
    g.add_argument("--top-k", type=int, help="cap the number of suppressed units (global, by AUROC)")
    g.add_argument("--pooling", choices=("max", "mean"), default="max", help="pooling over response tokens")
    g.add_argument("--calib-limit", type=int, help="use at most N calibration items")
    g = p.add_argument_group("export, quantize, engine")
    g.add_argument("--precision", choices=("fp32", "fp16", "int8", "int4"), default="fp32")
    g.add_argument("--target", choices=("cpu", "cuda", "jetson-orin"), default="cpu",
                   help="cpu: ONNX Runtime bundle; cuda: + TensorRT engines built here; jetson-orin: a bundle "
                        "with a script that builds the engines on the device")
    g = p.add_argument_group("evaluate")
    g.add_argument("--skip-eval", action="store_true", help="do not run MM-TOXIC-QA on the result")
    g.add_argument("--eval-limit", type=int, help="evaluate on at most N items")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="check the inputs and print the plan; write nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from calib.models import resolve

    model_type, location = resolve(args.model)
    print(f"model: {args.model} ({model_type}, {location})")
    if args.experts is not None and not (args.experts / "manifest.json").is_file():
        raise UserError(f"--experts {args.experts} is not an experts artifact (no manifest.json); "
                        "produce one with python -m calib.experts")
    missing = [s for s in STAGES if not available(s)]
    for s in STAGES:
        status = f"available as python -m {s.module}" if s not in missing else "not in this version yet"
        print(f"  {s.name:<9} -> {str(args.out or '<out>')}/{s.output:<20} {status}: {s.what}")
    if args.dry_run:
        return 0
    if args.out is None:
        raise UserError("--out is required (the directory that receives every stage's artifact)")
    if missing:
        raise UserError("this version cannot run the whole path yet: stage(s) " + ", ".join(s.name for s in missing)
                        + " are not implemented. Use --dry-run to check inputs, python -m calib.chat to try the "
                        "model, python -m runtime.mmtoxicqa run to evaluate it.")
    raise UserError("internal: every stage is present but compile.build does not chain them yet")


if __name__ == "__main__":
    sys.exit(cli.run(main))
