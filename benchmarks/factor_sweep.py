"""Which factors detoxify without breaking the model? SGM, AurA, Det0 (and any strength / cap) side by side.

    python benchmarks/factor_sweep.py --model smol-llava --experts own=build/experts-own \\
        --experts rtp=build/experts-rtp --out build/factor-sweep --limit 50 --samples 2 \\
        --variant baseline --variant own/sgm --variant own/aura --variant own/det0:top_fraction=0.01 \\
        --variant own/sgm:top_fraction=0.01 --variant own/sgm:s=2,top_fraction=0.01 --variant rtp/det0:top_fraction=0.01 \
        --variant baseline+safety --variant own/sgm+safety

Each variant is `baseline` or `EXPERTS/METHOD[:key=value,...]`: EXPERTS names an `--experts` artifact (its AUROCs
are reused; only the factors are recomputed, calib.experts.Experts.with_spec), METHOD is sgm, aura, det0 or damp,
and the keys are s (strength), t (threshold), top_k, top_fraction (of all scored units) and damp_alpha. A `+safety`
suffix adds the safety system prompt ahead of every request (runtime.protocol.SAFETY_PROMPT): `EXPERTS/sgm+safety` is
the paper's SGM*, `baseline+safety` the prompt alone.
Every variant runs the same MM-TOXIC-QA items with the same seeds through the hook intervention
(calib.intervention.Suppressed, the reference the fold is checked against), on the evaluation split, which is
disjoint from the calibration split the AUROCs came from. Run directories are resumable (--out/runs/<variant>).

Prints and writes (--out/sweep.md, sweep.json, and sweep.png when matplotlib is present): units suppressed,
harmful rate per toxic condition and overall with its 95% Wilson interval, the ratio to the baseline, mean
toxicity, self-perplexity on the neutral corpus ($SGM_PPL_CORPUS, else the packaged one) and its change, visual
accuracy, degenerate-output rate.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from calib.experts import Experts, load_experts  # noqa: E402
from calib.factors import FactorSpec, factor_spec, top_k_for  # noqa: E402
from runtime.errors import UserError  # noqa: E402
from runtime.mmtoxicqa.items import TOXIC_CONDITIONS  # noqa: E402
from runtime.protocol import SAFETY_PROMPT, SystemPrompted  # noqa: E402
from runtime.stats import wilson_interval  # noqa: E402

KEYS = {"s": "strength", "strength": "strength", "t": "threshold", "threshold": "threshold", "top_k": "top_k",
        "top_fraction": "top_fraction", "damp_alpha": "damp_alpha"}


def parse_variant(text: str, n_units: int) -> tuple[str | None, FactorSpec | None]:
    """`baseline` -> (None, None); `own/sgm:s=2,top_fraction=0.01` -> ('own', the resolved FactorSpec)."""
    if text == "baseline":
        return None, None
    source, sep, rest = text.partition("/")
    if not sep or not source:
        raise UserError(f"variant {text!r}: expected 'baseline' or EXPERTS/METHOD[:key=value,...]")
    method, _, params = rest.partition(":")
    kwargs: dict[str, Any] = {}
    for part in filter(None, params.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in KEYS:
            raise UserError(f"variant {text!r}: unknown parameter {part!r}; use {', '.join(sorted(KEYS))}")
        kwargs[KEYS[key]] = float(value)
    fraction = kwargs.pop("top_fraction", None)
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise UserError(f"variant {text!r}: top_fraction must be in (0, 1), got {fraction}")
        kwargs["top_k"] = top_k_for(fraction, n_units)
    if "top_k" in kwargs:
        kwargs["top_k"] = int(kwargs["top_k"])
    return source, factor_spec(method, **kwargs)


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _rate(block: dict[str, Any]) -> tuple[int, int]:
    return int(block["hits"]), int(block["total"])


def summarize(name: str, report: dict[str, Any], units: dict[str, Any] | None) -> dict[str, Any]:
    """One table row from a run's report."""
    hits, total = _rate(report["harmful_rate"])
    lo, hi = wilson_interval(hits, total) if total else (None, None)  # a run without toxic-eliciting items
    by_cond = report["harmful_rate_by_condition"]
    visual = report.get("visual_accuracy") or {}
    return {
        "variant": name,
        "units_suppressed": None if units is None else units["suppressed"],
        "suppressed_fraction": None if units is None else units["suppressed_fraction"],
        "harmful": {c: _rate(by_cond[c]) for c in TOXIC_CONDITIONS if c in by_cond},
        "harmful_all": [hits, total], "harmful_rate": hits / total if total else None, "harmful_ci95": [lo, hi],
        "benign_harmful": _rate(by_cond["benign"]) if "benign" in by_cond else None,
        "mean_toxicity": report["mean_toxicity"], "perplexity": report["perplexity"],
        "visual": [visual.get("hits"), visual.get("total")] if visual.get("total") else None,
        "degenerate_rate": (report.get("degenerate_rate") or {}).get("rate"),
        "echo": (report.get("echo") or {}).get("overlap_mean"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table; ratios and perplexity changes against the first row (the baseline when given)."""
    base = rows[0]
    conds = [c for c in TOXIC_CONDITIONS if c in base["harmful"]]
    head = (["variant", "units suppressed"] + [f"harmful {c}" for c in conds]
            + ["harmful (95% CI)", "cut vs first", "mean tox", "ppl", "ppl change", "visual", "degenerate"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        units = "0" if r["units_suppressed"] is None else f"{r['units_suppressed']} ({100 * r['suppressed_fraction']:.2f}%)"
        cut = (f"{base['harmful_rate'] / r['harmful_rate']:.1f}x" if r["harmful_rate"]
               else ("inf" if base["harmful_rate"] else "-"))
        ppl = r["perplexity"]
        dppl = f"{100 * (ppl / base['perplexity'] - 1):+.1f}%" if ppl and base["perplexity"] else "-"
        vis = f"{r['visual'][0]}/{r['visual'][1]}" if r["visual"] else "-"
        rate = (f"{100 * r['harmful_rate']:.1f}% [{100 * r['harmful_ci95'][0]:.1f}, {100 * r['harmful_ci95'][1]:.1f}]"
                if r["harmful_rate"] is not None else "-")
        tox = f"{r['mean_toxicity']:.3f}" if r["mean_toxicity"] is not None else "-"
        cells = ([r["variant"], units] + [f"{h}/{n}" for h, n in (r["harmful"][c] for c in conds)]
                 + [rate, cut, tox, f"{ppl:.2f}" if ppl else "-", dppl, vis,
                    f"{100 * r['degenerate_rate']:.1f}%" if r["degenerate_rate"] is not None else "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def strength_curves(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Variants that differ only in the strength s (same experts, method, threshold and cap), sorted by s.

    Keyed by a label such as "own/sgm top_k=1094"; only groups of two or more rows are returned.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        spec = r.get("spec")
        if not spec or spec.get("strength") is None:
            continue
        source = r["variant"].split("/", 1)[0]
        key = (f"{source}/{spec['method']}" + (f" top_k={spec['top_k']}" if spec.get("top_k") else "")
               + (f" t={spec['threshold']}" if spec.get("threshold") not in (None, 0.5) else ""))
        groups.setdefault(key, []).append(r)
    return {k: sorted(v, key=lambda r: r["spec"]["strength"]) for k, v in groups.items() if len(v) > 1}


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Harmful rate against perplexity, one labelled point per variant, strength curves joined by lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    points: dict[tuple[float, float], list[str]] = {}  # variants with identical results share one label
    for r in rows:
        if not r["perplexity"] or r["harmful_rate"] is None:
            continue
        lo, hi = r["harmful_ci95"]
        y = 100 * r["harmful_rate"]
        key = (round(r["perplexity"], 3), round(y, 3))
        if key not in points:
            ax.errorbar(r["perplexity"], y, yerr=[[y - 100 * lo], [100 * hi - y]], fmt="o", capsize=3)
        points.setdefault(key, []).append(r["variant"])
    for i, ((x, y), names) in enumerate(sorted(points.items())):
        ax.annotate("\n= ".join(names), (x, y), textcoords="offset points", xytext=(5, 4 if i % 2 else -14),
                    fontsize=7, va="bottom" if i % 2 else "top")
    for label, curve in strength_curves(rows).items():
        pts = [(r["perplexity"], 100 * r["harmful_rate"]) for r in curve if r["perplexity"]]
        ax.plot([x for x, _ in pts], [y for _, y in pts], "-", alpha=0.5,
                label=f"{label}: s = " + ", ".join(f"{r['spec']['strength']:g}" for r in curve))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    ax.set_xscale("log")
    ax.set_xlabel("self-perplexity on the neutral corpus (log)")
    ax.set_ylabel("harmful rate, toxic conditions (%)")
    ax.set_title("factor variants: toxicity vs fluency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smol-llava")
    p.add_argument("--experts", action="append", default=[], metavar="NAME=DIR", help="an experts artifact")
    p.add_argument("--variant", action="append", required=True, help="baseline or EXPERTS/METHOD[:k=v,...]")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dataset", type=Path, help="MM-TOXIC-QA dataset (default: the cached default build)")
    p.add_argument("--split", choices=("evaluation", "calibration"), default="evaluation",
                   help="dataset split (choose defaults on calibration, report on evaluation)")
    p.add_argument("--conditions", help="comma-separated subset of the conditions (default: all)")
    p.add_argument("--limit", type=int, default=50, help="items per condition")
    p.add_argument("--condition-limit", action="append", metavar="COND=N",
                   help="fewer items of one condition, e.g. jailbreak=16 (its prompts are ~650 tokens)")
    p.add_argument("--samples", type=int, default=2, help="sampled responses per toxic/benign item")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ppl-texts", type=int, help="corpus paragraphs for self-perplexity (default: the runner's)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from calib.intervention import Suppressed
    from calib.models import load_generator
    from runtime.judges import load_judge
    from runtime.mmtoxicqa import corpus
    from runtime.mmtoxicqa.builder import cached_dataset
    from runtime.mmtoxicqa.dataset import load_dataset
    from runtime.mmtoxicqa.evaluate import condition_limits, dataset_record, limit_items, parse_conditions
    from runtime.mmtoxicqa.runner import RunSettings, run_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_generator(args.model)
    sources: dict[str, Experts] = {}
    for entry in args.experts:
        name, eq, path = entry.partition("=")
        if not eq or not name or "/" in name:
            raise UserError(f"--experts {entry!r}: expected NAME=DIR with a NAME without '/'")
        sources[name] = load_experts(path, model)
    n_units = sum(u.width for u in model.mlp_units())
    variants = []
    for text in args.variant:
        factors, _, prompt = text.partition("+")
        if prompt not in ("", "safety"):
            raise UserError(f"variant {text!r}: the only suffix is '+safety' (the safety system prompt)")
        source, spec = parse_variant(factors, n_units)
        if source is not None and source not in sources:
            raise UserError(f"variant {text!r} names experts {source!r}; pass --experts {source}=DIR")
        variants.append((text, source, spec, SAFETY_PROMPT if prompt else None))

    root = args.dataset or cached_dataset()
    per_condition = condition_limits(args.condition_limit)
    conditions = parse_conditions([args.conditions] if args.conditions else None)
    items = limit_items(load_dataset(root, split=args.split, conditions=conditions), args.limit, per_condition)
    ppl_path = corpus.default_corpus()
    ppl_texts = corpus.load_corpus(ppl_path, **({"n_texts": args.ppl_texts} if args.ppl_texts else {}))
    ppl_info = corpus.corpus_info(ppl_path, ppl_texts)
    settings = RunSettings(max_new_tokens=args.max_new_tokens, samples=args.samples, batch_size=args.batch_size,
                           seed=args.seed)
    judge = load_judge()
    info = dataset_record(root, args.split, conditions, args.limit, per_condition)
    rows = []
    for text, source, spec, system_prompt in variants:
        if spec is None:
            gen, units = model, None
        else:
            experts = sources[source].with_spec(spec)
            gen, units = Suppressed(model, experts), experts.counts()["totals"]
        if system_prompt:
            gen = SystemPrompted(gen, system_prompt)
        t0 = time.perf_counter()
        report = run_benchmark(gen, judge, items, args.out / "runs" / slug(text), settings, ppl_texts=ppl_texts,
                               ppl_info=ppl_info, dataset=info, progress=not args.no_progress)
        row = summarize(text, report, units)
        row["spec"] = None if spec is None else spec.to_dict()
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"{text}: harmful {row['harmful_all'][0]}/{row['harmful_all'][1]}, ppl {row['perplexity']}, "
              f"{row['wall_s']} s", flush=True)
    md = table(rows)
    settings_line = (f"model {args.model}; {args.split} split ({', '.join(conditions)}), {args.limit} items per condition"
                     f"{''.join(f' ({c}: {n})' for c, n in per_condition.items())}, {args.samples} "
                     f"sampled responses per toxic/benign item (T=1, top-p 0.9, {args.max_new_tokens} new tokens, "
                     f"seed {args.seed}); visual items greedy; judge {judge.describe().get('name', 'default')}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.md").write_text(f"{settings_line}\n\n{md}\n")
    (args.out / "sweep.json").write_text(json.dumps({"settings": settings_line, "rows": rows}, indent=1) + "\n")
    plotted = plot(rows, args.out / "sweep.png")
    print(settings_line)
    print(md)
    print(f"wrote {args.out / 'sweep.md'}, sweep.json" + (", sweep.png" if plotted else ""))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from runtime import cli

    def _main(a: Sequence[str] | None) -> None:
        run(_parser().parse_args(a))

    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
