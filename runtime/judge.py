"""Score texts with a toxicity judge, or validate judges against Perspective labels.

    python -m runtime.judge --input FILE.jsonl --field prompt.text --out SCORES.jsonl [--judge NAME] [--batch-size N]
    python -m runtime.judge validate --input RTP.jsonl [RTP.jsonl ...] [--judge NAME ...] [--out REPORT.json]

Scoring writes one JSON object per input record, {"line": <1-based input line>, "judge": NAME, "toxicity": p},
atomically (nothing appears unless every line was read and scored). Validation reports, per judge and for
RTP prompts and continuations separately, the AUROC against Perspective (toxic at >= 0.5), agreement at the
judge's threshold, and throughput in texts per second. Judges: see `runtime.judges` (default: bilstm).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Sequence

import numpy as np

from runtime import cli
from runtime.artifacts import check_output
from runtime.errors import UserError
from runtime.judges import DEFAULT_JUDGE, KNOWN_JUDGES, load_judge
from runtime.judges.jsonl import read_jsonl, text_field, write_jsonl_atomic, write_text_atomic
from runtime.judges.validate import RTP_PARTS, agreement, read_reference

_JUDGE_HELP = f"toxicity judge: {', '.join(KNOWN_JUDGES)} (default {DEFAULT_JUDGE})"


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def score_file(input_path: str, field: str, out: str, judge_name: str = DEFAULT_JUDGE, batch_size: int = 256,
               progress: bool = True) -> int:
    """Judge the text at `field` of every line of `input_path`; write `out`; return the number of records."""
    from tqdm import tqdm

    check_output(out, [input_path], directory=False)
    rows = read_jsonl(input_path)
    if not rows:
        raise UserError(f"{input_path} holds no records; pass a JSON-lines file with one object per line")
    lines = [number for number, _ in rows]
    texts = [text_field(record, field, input_path, number) for number, record in rows]
    judge = load_judge(judge_name)
    scores = np.zeros(len(texts), dtype=np.float64)
    with tqdm(total=len(texts), unit="text", desc=judge.name, disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            got = np.asarray(judge.score(batch), dtype=np.float64)
            if got.shape != (len(batch),) or not np.all((got >= 0.0) & (got <= 1.0)):
                raise RuntimeError(f"judge {judge.name} returned {got.shape} scores outside [0, 1] for {len(batch)} texts")
            scores[start:start + len(batch)] = got
            bar.update(len(batch))
    write_jsonl_atomic(out, ({"line": n, "judge": judge.name, "toxicity": float(s)} for n, s in zip(lines, scores)))
    return len(texts)


def validate_files(inputs: Sequence[str], judge_names: Sequence[str], parts: Sequence[str] = RTP_PARTS,
                   threshold: float = 0.5) -> list[dict[str, Any]]:
    """Per judge: its description, load time and, per RTP part, `agreement` with the Perspective labels."""
    reference = read_reference(inputs, parts)
    results = []
    for name in judge_names:
        start = time.perf_counter()
        judge = load_judge(name, threshold=threshold)
        loaded = time.perf_counter() - start
        per_part = {}
        for part in parts:
            data = reference[part]
            per_part[part] = agreement(judge, data["texts"], data["reference"], threshold)
            per_part[part]["unscored"] = data["unscored"]
        results.append({"judge": judge.describe(), "load_seconds": loaded, "parts": per_part})
    return results


def _table(results: list[dict[str, Any]]) -> str:
    head = f"{'judge':<16} {'part':<13} {'n':>5} {'toxic':>5} {'AUROC':>7} {'acc':>6} {'prec':>6} {'recall':>6} " \
           f"{'flagged':>7} {'ref':>6} {'texts/s':>8}"
    out = [head]
    for r in results:
        for part, m in r["parts"].items():
            out.append(f"{r['judge']['name']:<16} {part:<13} {m['n']:>5} {m['positives']:>5} {m['auroc']:>7.4f} "
                       f"{m['accuracy']:>6.3f} {m['precision']:>6.3f} {m['recall']:>6.3f} {m['harmful_rate']:>7.3f} "
                       f"{m['reference_rate']:>6.3f} {m['texts_per_s']:>8.0f}")
    return "\n".join(out)


def _score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.judge", description=__doc__.split("\n")[0],
                                epilog="Validate judges instead: python -m runtime.judge validate --help")
    p.add_argument("--input", required=True, help="JSON-lines file, one record per line")
    p.add_argument("--field", required=True, help="dotted path of the text in each record, e.g. prompt.text")
    p.add_argument("--out", required=True, help="JSON-lines file to write the scores to")
    p.add_argument("--judge", default=DEFAULT_JUDGE, help=_JUDGE_HELP)
    p.add_argument("--batch-size", type=_positive_int, default=256, help="texts per judge call (default 256)")
    p.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    return p


def _validate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.judge validate",
                                description="AUROC of judges against the Perspective labels of RTP rows")
    p.add_argument("--input", required=True, nargs="+", help="RealToxicityPrompts JSON-lines file(s)")
    p.add_argument("--judge", action="append", help=f"{_JUDGE_HELP}; repeat to compare several")
    p.add_argument("--part", action="append", choices=RTP_PARTS, help="validate only this part (repeatable)")
    p.add_argument("--threshold", type=float, default=0.5, help="judge score that counts as harmful (default 0.5)")
    p.add_argument("--out", help="also write the results to this JSON file")
    return p


def _main(argv: Sequence[str]) -> int:
    if argv[:1] == ["validate"]:
        args = _validate_parser().parse_args(argv[1:])
        if args.out:
            check_output(args.out, args.input, directory=False)
        results = validate_files(args.input, args.judge or [DEFAULT_JUDGE], args.part or RTP_PARTS, args.threshold)
        print(_table(results))
        if args.out:
            write_text_atomic(args.out, json.dumps(results, indent=2) + "\n")
        return 0
    args = _score_parser().parse_args(argv)
    n = score_file(args.input, args.field, args.out, args.judge, args.batch_size, progress=not args.no_progress)
    print(f"wrote {n} scores to {args.out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit with status 2."""
    return cli.run(_main, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
