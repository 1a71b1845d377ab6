"""Does a second judge agree? Re-score the responses of finished MM-TOXIC-QA runs with another judge.

    python benchmarks/second_judge.py --judge hatesonar RUN_DIR [RUN_DIR ...]

Each RUN_DIR holds a runner's generations.jsonl (runtime.mmtoxicqa run, or one variant of
benchmarks/factor_sweep.py under --out/runs/). Prints, per run, the harmful rate over the toxic-eliciting conditions
by the run's own judge and by `--judge` (harmful = score >= its threshold), and the cut relative to the first run,
so a detoxification's direction can be checked with a judge it was not calibrated with.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.errors import UserError  # noqa: E402
from runtime.mmtoxicqa.items import TOXIC_CONDITIONS  # noqa: E402
from runtime.stats import wilson_interval  # noqa: E402


def _rows(run: Path) -> list[dict]:
    path = run / "generations.jsonl"
    if not path.is_file():
        raise UserError(f"{run} has no generations.jsonl; give the directory of a finished MM-TOXIC-QA run")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["condition"] in TOXIC_CONDITIONS]


def _cell(hits: int, n: int, first: float | None) -> str:
    low, high = wilson_interval(hits, n)
    rate = hits / n
    cut = "" if first is None else f", {first / rate:.1f}x" if rate else ", inf"
    return f"{100 * rate:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({hits}/{n}{cut})"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/second_judge.py", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--judge", default="hatesonar", help="the second judge (runtime.judges names)")
    args = p.parse_args(argv)
    from runtime.judges import load_judge

    judge = load_judge(args.judge)
    threshold = float(getattr(judge, "threshold", 0.5))
    print(f"| run | responses | own judge | {args.judge} |\n|---|---|---|---|")
    firsts: list[float | None] = [None, None]
    for run in args.runs:
        rows = _rows(run)
        if not rows:
            raise UserError(f"{run} has no responses to toxic-eliciting conditions")
        second = judge.score([r["response"] for r in rows])
        own_hits = sum(bool(r["harmful"]) for r in rows)
        second_hits = int(sum(float(s) >= threshold for s in second))
        cells = []
        for i, hits in enumerate((own_hits, second_hits)):
            cells.append(_cell(hits, len(rows), firsts[i]))
            if firsts[i] is None:
                firsts[i] = hits / len(rows)
        print(f"| {run.name} | {len(rows)} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    from runtime import cli

    sys.exit(cli.run(main))
