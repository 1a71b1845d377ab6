"""Decode speed of the compiled runtime vs transformers `generate()` on the same model and prompts, in one run.

Both sides get the same image + text prompts as embeddings (the runtime's from its own vision and embed
graphs, PyTorch's from the model), greedy, `--new-tokens` new tokens, batch 1. Runners are interleaved
(their order alternates every repetition) after warm-up rounds, so a noisy host slows all of them alike.
Measured per run: prefill (prompt in to first logits, ms) and decode rate (tokens after the first, per second).
transformers is timed by a logits processor, which it calls right after every forward pass.

    .venv/bin/python benchmarks/decode_speed.py --bundle build/smol-llava/bundle --model smol-llava

Rows: `runtime` (ONNX Runtime, IO binding: the KV cache stays in ORT's buffers), `runtime-run` (plain
session.run, numpy in and out: the before of the IO-binding change), `transformers` (fp32 generate()).
Also printed: whether each prompt's greedy tokens are identical between the runtime and PyTorch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import run_interleaved, summarise  # noqa: E402
from runners import ort_runner, torch_runner  # noqa: E402

from runtime.generate import BundleGenerator  # noqa: E402
from runtime.images import open_image  # noqa: E402
from runtime.protocol import GenerationRequest  # noqa: E402

PROMPTS = (("What is in this picture?", "skimage:astronaut"),
           ("Describe the image in detail.", "skimage:chelsea"),
           ("What colours do you see?", "skimage:coffee"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, type=Path, help="fp32 bundle of --model (python -m compile.export)")
    ap.add_argument("--model", default="smol-llava", help="the PyTorch model the bundle was exported from")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="measured rounds (each runs every prompt on every runner)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--threads", type=int, default=2, help="threads for every runner")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch

    from calib.models import load_model

    model = load_model(args.model)
    fast = BundleGenerator.open(args.bundle, threads=args.threads)
    plain = BundleGenerator(fast.bundle, type(fast.backend)(fast.bundle, type(fast.backend.options)(
        threads=args.threads, io_binding=False, decoder="standard")), fast.tokenizer)
    requests = [GenerationRequest(q, open_image(im)) for q, im in PROMPTS[:args.prompts]]
    ours_embeds = [fast.request_embeds(r) for r in requests]
    torch_embeds = [model.inputs_embeds(model.request_ids(r), [r.image]) for r in requests]
    runners = {"runtime": (ort_runner(fast), ours_embeds), "runtime-run": (ort_runner(plain), ours_embeds),
               "transformers": (torch_runner(model, args.threads), torch_embeds)}

    tokens: dict[str, list[list[int]]] = {name: [[] for _ in requests] for name in runners}

    def timed(name: str):
        def run(p: int) -> dict[str, float] | None:
            fn, embeds = runners[name]
            r = fn(embeds[p], args.new_tokens)
            tokens[name][p] = r.pop("tokens")
            return r if r["steps"] > 0 else None
        return run

    records = run_interleaved({name: timed(name) for name in runners}, len(requests), args.warmup, args.repeats,
                              lambda msg: print(msg, file=sys.stderr))
    results = {name: {**{k: v for k, v in summarise(rs).items() if k in ("prefill_ms", "decode_tok_s")},
                      "runs": len(rs)} for name, rs in records.items()}
    identical = [tokens["runtime"][p] == tokens["transformers"][p] for p in range(len(requests))]
    lengths = [len(tokens["runtime"][p]) for p in range(len(requests))]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}"
    print(f"\n{args.model}: {len(requests)} image+text prompts, greedy, up to {args.new_tokens} new tokens, batch 1, "
          f"{args.threads} threads, {args.warmup} warm-up + {args.repeats} rounds, interleaved; {machine}")
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}")
    print(f"{'runner':<14}{'prefill ms (median [min-max])':>32}{'decode tok/s (median [min-max])':>34}")
    for name, r in results.items():
        pf, dc = r["prefill_ms"], r["decode_tok_s"]
        print(f"{name:<14}{pf['median']:>14.1f} [{pf['min']:.1f}-{pf['max']:.1f}]".ljust(46)
              + f"{dc['median']:>14.2f} [{dc['min']:.2f}-{dc['max']:.2f}]")
    ratio = results["runtime"]["decode_tok_s"]["median"] / results["transformers"]["decode_tok_s"]["median"]
    io_gain = results["runtime"]["decode_tok_s"]["median"] / results["runtime-run"]["decode_tok_s"]["median"]
    print(f"decode ratio runtime / transformers generate(): {ratio:.2f}x; IO binding vs session.run: {io_gain:.2f}x")
    print(f"greedy tokens identical to PyTorch: {sum(identical)}/{len(identical)} prompts "
          f"(tokens generated: {lengths})")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "bundle": str(args.bundle), "args": vars(args) | {
            "bundle": str(args.bundle), "json": str(args.json)}, "machine": machine, "results": results,
            "ratio_decode": ratio, "io_binding_gain": io_gain, "identical": identical, "lengths": lengths},
            indent=2))


if __name__ == "__main__":
    main()
