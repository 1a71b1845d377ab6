"""CLI: `python -m runtime.mmtoxicqa build --out DIR` and
`python -m runtime.mmtoxicqa run --model NAME --out DIR` (PyTorch) or `run --bundle DIR --out DIR` (compiled),
on the built-in dataset or your own set (`--dataset rtp:FILE.jsonl`, `figstep:CSV[:IMAGES]`, `mmsafetybench:DIR`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from runtime import cli
from runtime.errors import UserError
from runtime.mmtoxicqa import corpus
from runtime.mmtoxicqa.builder import BuildConfig, build_dataset
from runtime.mmtoxicqa.evaluate import Evaluation, condition_limits, evaluate, parse_conditions
from runtime.mmtoxicqa.items import CONDITIONS, SPLITS
from runtime.mmtoxicqa.runner import RunSettings
from runtime.protocol import system_prompt_text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.mmtoxicqa", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the dataset directory (deterministic, atomic)")
    b.add_argument("--out", required=True, type=Path, help="new directory to write")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--eval-size", type=int, default=BuildConfig.eval_size, help="evaluation items per condition")
    b.add_argument("--calib-size", type=int, default=BuildConfig.calib_size, help="calibration items per condition")
    b.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    r = sub.add_parser("run", help="generate, judge and report on a model")
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model zoo name or path (smol-llava, tiny-random-llava, llava, DIR); "
                                        "needs torch")
    source.add_argument("--bundle", type=Path, help="compiled bundle directory (python -m compile.export), run by "
                                                    "the torch-free runtime on ONNX Runtime")
    r.add_argument("--native", action="store_true", help="run the --bundle through the native host sgm-run (native/, "
                                                          "built by CMake; runtime.native) instead of the Python runtime")
    r.add_argument("--out", required=True, type=Path, help="run directory (reused to resume)")
    r.add_argument("--dataset", help="an MM-TOXIC-QA dataset directory (default: the default build, in the cache), "
                                     "or your own set: rtp:FILE.jsonl (RealToxicityPrompts as chat requests; rtp-continuation:FILE.jsonl "
                                     "as raw text), figstep:CSV[:IMAGES] "
                                     "(FigStep SafeBench), mmsafetybench:DIR (MM-SafetyBench root)")
    r.add_argument("--split", default=Evaluation.split, choices=SPLITS)
    r.add_argument("--limit", type=int, help="at most N items per condition")
    r.add_argument("--condition-limit", action="append", metavar="COND=N",
                   help="at most N items of this condition (overrides --limit for it; repeatable)")
    r.add_argument("--conditions", nargs="+", help=f"subset of {', '.join(CONDITIONS)} (space or comma separated)")
    r.add_argument("--judge", help="toxicity judge (default: runtime.judges' default, the Jigsaw BiLSTM)")
    r.add_argument("--max-new-tokens", type=int, default=RunSettings.max_new_tokens)
    r.add_argument("--seed", type=int, default=RunSettings.seed)
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--sample", dest="do_sample", action="store_true", default=True,
                      help="sample (default; visual items are always greedy)")
    mode.add_argument("--greedy", dest="do_sample", action="store_false")
    r.add_argument("--temperature", type=float, default=RunSettings.temperature)
    r.add_argument("--top-p", type=float, default=RunSettings.top_p)
    r.add_argument("--samples", type=int, default=RunSettings.samples,
                   help="sampled responses per item (k; visual items: 1), for expected max toxicity and toxicity "
                        "probability")
    r.add_argument("--batch-size", type=int, default=RunSettings.batch_size)
    ppl = r.add_mutually_exclusive_group()
    ppl.add_argument("--ppl-corpus", type=Path, help="plain-text corpus for self-perplexity (default: "
                                                     f"${corpus.CORPUS_ENV}, else the packaged Wikipedia corpus)")
    ppl.add_argument("--no-ppl", action="store_true", help="skip self-perplexity")
    r.add_argument("--ppl-texts", type=int, default=Evaluation.ppl_texts, help="paragraphs of the corpus to score")
    r.add_argument("--reference-model", help="model zoo name whose perplexity of the responses is reported")
    r.add_argument("--system-prompt", metavar="TEXT",
                   help="text put ahead of every request of the model under test ('safety': the built-in safety "
                        "prompt, runtime.protocol.SAFETY_PROMPT; with a detoxified model that is SGM*); a bundle "
                        "applies its own runtime.json prompt.system_prompt by itself")
    r.add_argument("--no-progress", action="store_true")

    c = sub.add_parser("compare", help="before -> after of two runs on the same items (harmful rate with its "
                                       "interval and the interval of the difference, RTP metrics, perplexity)")
    c.add_argument("before", type=Path, help="run directory or report.json of the undetoxified model")
    c.add_argument("after", type=Path, help="run directory or report.json of the detoxified model")
    return p


def _build(args: argparse.Namespace) -> None:
    out = build_dataset(args.out, BuildConfig(args.seed, args.eval_size, args.calib_size), overwrite=args.overwrite)
    print(f"wrote {out}")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    settings = RunSettings(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed, samples=args.samples,
                           batch_size=args.batch_size)
    evaluation = Evaluation(settings, dataset=args.dataset, split=args.split,
                            conditions=parse_conditions(args.conditions),
                            limit=args.limit, condition_limits=condition_limits(args.condition_limit),
                            judge=args.judge, ppl=not args.no_ppl, ppl_corpus=args.ppl_corpus,
                            ppl_texts=args.ppl_texts, reference_model=args.reference_model,
                            progress=not args.no_progress, system_prompt=system_prompt_text(args.system_prompt))
    return evaluate(args.out, evaluation, bundle=args.bundle, model=args.model, native=args.native)


def _compare(args: argparse.Namespace) -> None:
    from runtime.mmtoxicqa.compat import mismatches
    from runtime.mmtoxicqa.reports import read_generations, read_report
    from runtime.mmtoxicqa.summary import before_after

    before, after = read_report(args.before), read_report(args.after)
    problems = mismatches(before, after)
    if problems:
        raise UserError(f"{args.before} and {args.after} did not answer the same items with the same settings "
                        f"({'; '.join(problems)}); rerun both with the same --dataset, --conditions, --limit and "
                        f"decoding settings")
    print("\n".join(before_after(before, after, read_generations(args.before), read_generations(args.after))))


def _main(argv: Sequence[str] | None) -> None:
    args = _parser().parse_args(argv)
    {"build": _build, "run": _run, "compare": _compare}[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; a user error prints one line and returns 2."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
