"""CLI: `python -m runtime.mmtoxicqa build --out DIR` and
`python -m runtime.mmtoxicqa run --model NAME --out DIR` (PyTorch) or `run --bundle DIR --out DIR` (compiled),
on the built-in dataset or your own set (`--dataset rtp:FILE.jsonl`, `figstep:CSV[:IMAGES]`, `mmsafetybench:DIR`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from runtime import cli
from runtime.errors import UserError
from runtime.judges.base import Judge
from runtime.mmtoxicqa import corpus
from runtime.mmtoxicqa.builder import BuildConfig, build_dataset
from runtime.mmtoxicqa.dataset import dataset_info
from runtime.mmtoxicqa.items import CONDITIONS, SPLITS, Item, check_conditions
from runtime.mmtoxicqa.runner import REPORT_FILE, RunSettings, run_benchmark
from runtime.mmtoxicqa.spec import load_spec, parse_dataset
from runtime.mmtoxicqa.summary import headline
from runtime.protocol import Generator


def load_model(name: str) -> Generator:
    """A PyTorch model from the model zoo (imported only here: it needs torch)."""
    try:
        from calib.models import load_generator
    except ImportError as e:
        raise UserError(f"--model needs the PyTorch model zoo (calib.models, toolchain extra): "
                        f"pip install 'sgm-edge[toolchain]' ({e})") from e
    return load_generator(name)


def load_bundle(directory: Path) -> Generator:
    """A compiled bundle through the torch-free runtime (ONNX Runtime, CPU)."""
    from runtime.generate import BundleGenerator

    return BundleGenerator.open(directory)


def load_judge(name: str | None) -> Judge:
    """A toxicity judge by name (runtime.judges; its default when None)."""
    from runtime.judges import load_judge as _load

    return _load() if name is None else _load(name)


def limit_items(items: Sequence[Item], limit: int | None,
                per_condition: Mapping[str, int] | None = None) -> list[Item]:
    """The first `limit` items of each condition, in dataset order (all when None); `per_condition` overrides
    the limit for the conditions it names (jailbreak prompts are ~650 tokens: the costly ones on a CPU)."""
    overrides = dict(per_condition or {})
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    for cond, value in overrides.items():
        if value < 1:
            raise UserError(f"--condition-limit {cond}={value}: the limit must be >= 1")
    taken: dict[str, int] = {}
    out = []
    for it in items:
        cap = overrides.get(it.condition, limit)
        if cap is None or taken.get(it.condition, 0) < cap:
            taken[it.condition] = taken.get(it.condition, 0) + 1
            out.append(it)
    return out


def condition_limits(values: Sequence[str] | None) -> dict[str, int]:
    """`--condition-limit COND=N` values as a mapping, with the condition and the number checked."""
    out: dict[str, int] = {}
    for value in values or ():
        cond, eq, n = value.partition("=")
        if not eq or not n.strip().isdigit():
            raise UserError(f"--condition-limit {value!r}: expected CONDITION=N, e.g. jailbreak=16")
        check_conditions([cond])
        out[cond] = int(n)
    return out


def parse_conditions(values: Sequence[str] | None) -> tuple[str, ...]:
    """`--conditions` values (space or comma separated) as checked condition names; all when none are given."""
    if not values:
        return CONDITIONS
    return check_conditions([c for v in values for c in v.split(",") if c])


def dataset_record(root: Path | Mapping[str, Any], split: str, conditions: Sequence[str], limit: int | None,
                   per_condition: Mapping[str, int] | None) -> dict[str, Any]:
    """What a run answered, as its report records it (runtime.check compares these fields between runs);
    `root` is a dataset directory or the provenance of an external set (runtime.mmtoxicqa.spec)."""
    info = dict(root) if isinstance(root, Mapping) else dataset_info(root)
    return {**info, "split": split, "conditions": list(conditions), "limit": limit,
            **({"condition_limits": dict(per_condition)} if per_condition else {})}


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
    r.add_argument("--out", required=True, type=Path, help="run directory (reused to resume)")
    r.add_argument("--dataset", help="an MM-TOXIC-QA dataset directory (default: the default build, in the cache), "
                                     "or your own set: rtp:FILE.jsonl (RealToxicityPrompts), figstep:CSV[:IMAGES] "
                                     "(FigStep SafeBench), mmsafetybench:DIR (MM-SafetyBench root)")
    r.add_argument("--split", default="evaluation", choices=SPLITS)
    r.add_argument("--limit", type=int, help="at most N items per condition")
    r.add_argument("--condition-limit", action="append", metavar="COND=N",
                   help="at most N items of this condition (overrides --limit for it; repeatable)")
    r.add_argument("--conditions", nargs="+", help=f"subset of {', '.join(CONDITIONS)} (space or comma separated)")
    r.add_argument("--judge", help="toxicity judge (default: runtime.judges' default, the Jigsaw BiLSTM)")
    r.add_argument("--max-new-tokens", type=int, default=RunSettings.max_new_tokens)
    r.add_argument("--seed", type=int, default=0)
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--sample", dest="do_sample", action="store_true", default=True,
                      help="sample (default; visual items are always greedy)")
    mode.add_argument("--greedy", dest="do_sample", action="store_false")
    r.add_argument("--temperature", type=float, default=RunSettings.temperature)
    r.add_argument("--top-p", type=float, default=RunSettings.top_p)
    r.add_argument("--samples", type=int, default=1, help="sampled responses per item (k; visual items: 1), for "
                                                          "expected max toxicity and toxicity probability")
    r.add_argument("--batch-size", type=int, default=RunSettings.batch_size)
    ppl = r.add_mutually_exclusive_group()
    ppl.add_argument("--ppl-corpus", type=Path, help="plain-text corpus for self-perplexity (default: "
                                                     f"${corpus.CORPUS_ENV}, else the packaged Wikipedia corpus)")
    ppl.add_argument("--no-ppl", action="store_true", help="skip self-perplexity")
    r.add_argument("--ppl-texts", type=int, default=corpus.N_TEXTS, help="paragraphs of the corpus to score")
    r.add_argument("--reference-model", help="model zoo name whose perplexity of the responses is reported")
    r.add_argument("--no-progress", action="store_true")
    return p


def _build(args: argparse.Namespace) -> None:
    out = build_dataset(args.out, BuildConfig(args.seed, args.eval_size, args.calib_size), overwrite=args.overwrite)
    print(f"wrote {out}")


def _run(args: argparse.Namespace) -> dict[str, Any]:
    settings = RunSettings(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed, samples=args.samples,
                           batch_size=args.batch_size)
    settings.check()
    conditions = parse_conditions(args.conditions)
    per_condition = condition_limits(args.condition_limit)
    selected, provenance = load_spec(parse_dataset(args.dataset), args.split, conditions)
    items = limit_items(selected, args.limit, per_condition)
    ppl_path = None if args.no_ppl else (args.ppl_corpus or corpus.default_corpus())
    ppl_texts = corpus.load_corpus(ppl_path, n_texts=args.ppl_texts) if ppl_path is not None else None
    ppl_info = corpus.corpus_info(ppl_path, ppl_texts) if ppl_texts else None
    judge = load_judge(args.judge)
    generator = load_bundle(args.bundle) if args.bundle is not None else load_model(args.model)
    reference = load_model(args.reference_model) if args.reference_model else None
    info = dataset_record(provenance, args.split, conditions, args.limit, per_condition)
    report = run_benchmark(generator, judge, items, args.out, settings, ppl_texts=ppl_texts, ppl_info=ppl_info,
                           reference=reference, dataset=info, progress=not args.no_progress)
    print("\n".join(headline(report)))
    print(f"wrote {args.out / REPORT_FILE}")
    return report


def _main(argv: Sequence[str] | None) -> None:
    args = _parser().parse_args(argv)
    _build(args) if args.command == "build" else _run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; a user error prints one line and returns 2."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
