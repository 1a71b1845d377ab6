"""Split RealToxicityPrompts JSONL files into a calibration part and a held-out part, disjoint from MM-TOXIC-QA.

AurA-style experts are scored on labelled web text (`calib.experts --calib rtp:FILE`); measuring them honestly
needs text that shares no prompt with the benchmark's evaluation split, and a held-out RTP part that was in no
split at all (for `runtime.mmtoxicqa run --dataset rtp:FILE`). This writes both, and says how many rows it
dropped because their prompt is also an MM-TOXIC-QA prompt (any split, any condition).

    python benchmarks/rtp_split.py ../shared/data/rtp-challenging/toxic.dev.jsonl \
        ../shared/data/rtp-challenging/nontoxic.dev.jsonl --calib-rows 400 \
        --calib-out build/rtp/calib.jsonl --holdout-out build/rtp/holdout-toxic.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.artifacts import check_output  # noqa: E402
from runtime.cli import run  # noqa: E402
from runtime.errors import UserError  # noqa: E402


def _prompt(line: str, path: Path, lineno: int) -> str:
    try:
        return json.loads(line)["prompt"]["text"].strip()
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} line {lineno}: not a RealToxicityPrompts row ({e})") from None


def split_rows(files: list[Path], calib_rows: int, exclude: set[str]) -> tuple[list[str], list[str], int]:
    """(calibration lines, held-out lines, dropped count): the first `calib_rows` lines of every file calibrate,
    the rest of the first file is held out, and a line whose prompt is in `exclude` goes nowhere."""
    if calib_rows < 0:
        raise UserError(f"--calib-rows must be >= 0, got {calib_rows}")
    calib, holdout, dropped = [], [], 0
    for n, path in enumerate(files):
        if not path.is_file():
            raise UserError(f"{path} does not exist; pass RealToxicityPrompts JSONL files")
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        for i, line in enumerate(lines):
            if _prompt(line, path, i + 1) in exclude:
                dropped += 1
            elif i < calib_rows:
                calib.append(line)
            elif n == 0:
                holdout.append(line)
    return calib, holdout, dropped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="RTP JSONL files (e.g. toxic and non-toxic prompts)")
    p.add_argument("--calib-rows", type=int, default=400, help="first N rows of each file go to calibration")
    p.add_argument("--calib-out", type=Path, required=True)
    p.add_argument("--holdout-out", type=Path, required=True,
                   help="the rest of the FIRST file (the toxic prompts), for an out-of-split evaluation")
    p.add_argument("--dataset", default=None, help="MM-TOXIC-QA dataset whose prompts are excluded "
                                                  "(default: the cached default build)")

    def _main(argv: list[str] | None) -> None:
        args = p.parse_args(argv)
        from runtime.mmtoxicqa import cached_dataset, load_dataset

        for out in (args.calib_out, args.holdout_out):
            check_output(out, [str(f) for f in args.files], directory=False)
        root = Path(args.dataset) if args.dataset else cached_dataset()
        bench = {it.prompt.strip() for split in ("calibration", "evaluation") for it in load_dataset(root, split=split)}
        calib, holdout, dropped = split_rows(args.files, args.calib_rows, bench)
        for out, rows in ((args.calib_out, calib), (args.holdout_out, holdout)):
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(out.suffix + ".tmp")
            tmp.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
            tmp.replace(out)
        print(f"calibration {len(calib)} rows -> {args.calib_out}; held out {len(holdout)} rows -> "
              f"{args.holdout_out}; {dropped} rows dropped (prompt also in {root})")

    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
