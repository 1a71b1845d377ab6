"""Smoke MM-TOXIC-QA on a Jetson: the bundle's TensorRT engines answer a few items of every condition,
judged on the device. The Jetson bundle (compile.jetson) runs it with its own directories from `smoke.sh`:

    ./smoke.sh [--limit 4] [--max-new-tokens 32]   (from the Jetson bundle directory, after build_engines.sh)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence


def run_smoke(bundle_dir: Path, engines_dir: Path, dataset_dir: Path, out: Path, limit: int = 4,
              max_new_tokens: int = 32) -> dict[str, Any]:
    """Run `limit` items per condition through the TensorRT backend; returns the report (also in `out`)."""
    from runtime.generate import BundleGenerator
    from runtime.judges import load_judge
    from runtime.mmtoxicqa.dataset import dataset_info, load_dataset
    from runtime.mmtoxicqa.runner import RunSettings, run_benchmark

    generator = BundleGenerator.open(bundle_dir, "tensorrt", engines=engines_dir)
    bundle, backend = generator.bundle, generator.backend
    limits = backend.manifest["limits"]
    render = bundle.spec.prompt.render
    context = bundle.spec.context_length
    items, taken, skipped, too_long = [], {}, [], []
    for item in load_dataset(dataset_dir, split="evaluation"):
        if taken.get(item.condition, 0) >= limit:
            continue
        n = len(generator.tokenizer.prompt_ids(render(item.prompt, item.image is not None, True)))
        if n > limits["max_prompt"] or n + max_new_tokens > limits["max_context"]:
            skipped.append({"id": item.id, "condition": item.condition, "prompt_tokens": n})
            continue
        if context is not None and n + max_new_tokens > context:  # the runtime refuses these
            too_long.append({"id": item.id, "condition": item.condition, "prompt_tokens": n})
            continue
        taken[item.condition] = taken.get(item.condition, 0) + 1
        items.append(item)
    settings = RunSettings(max_new_tokens=max_new_tokens, batch_size=1)
    started = time.perf_counter()
    report = run_benchmark(generator, load_judge(), items, out, settings, dataset=dataset_info(dataset_dir),
                           progress=False)
    timings = generator.last_timings
    steps = sum(t.decode_steps for t in timings)
    seconds = sum(t.decode_s for t in timings)
    report["smoke"] = {"items": len(items), "skipped_over_engine_limits": skipped,
                       "skipped_over_model_context": too_long,
                       "wall_s": round(time.perf_counter() - started, 2),
                       "last_batch_decode_tokens_per_s": round(steps / seconds, 2) if seconds else None,
                       "backend": backend.describe()}
    (out / "smoke.json").write_text(json.dumps(report["smoke"], indent=2) + "\n")
    backend.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    from runtime import cli

    p = argparse.ArgumentParser(prog="python -m runtime.jetson_smoke", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="the bundle the engines were built from")
    p.add_argument("--engines", type=Path, required=True, help="the engines directory (compile.engine)")
    p.add_argument("--dataset", type=Path, required=True, help="an MM-TOXIC-QA dataset directory")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--limit", type=int, default=4, help="items per condition")
    p.add_argument("--max-new-tokens", type=int, default=32)

    def run(argv: Sequence[str] | None) -> int:
        args = p.parse_args(argv)
        report = run_smoke(args.bundle, args.engines, args.dataset, args.out, args.limit, args.max_new_tokens)
        hr = report["harmful_rate"]
        print(f"smoke MM-TOXIC-QA ({report['smoke']['items']} items): harmful rate {hr['rate']} "
              f"({hr['hits']}/{hr['total']}), visual accuracy {report['visual_accuracy']['rate']}, "
              f"degenerate {report['degenerate_rate']['rate']}; {report['smoke']['backend']}")
        if report["smoke"]["skipped_over_engine_limits"]:
            print(f"skipped {len(report['smoke']['skipped_over_engine_limits'])} items longer than the engines' "
                  "limits (rebuild with a larger MAX_CONTEXT_OVERRIDE to include them)")
        if report["smoke"]["skipped_over_model_context"]:
            print(f"skipped {len(report['smoke']['skipped_over_model_context'])} items longer than the model's "
                  "context")
        print(f"report: {args.out / 'report.json'}")
        return 0

    return cli.run(run, argv)


if __name__ == "__main__":
    sys.exit(main())
