"""Ask a compiled bundle one question about one image (or none) and print its answer. No torch needed.

    python -m runtime.chat --bundle build/smol-llava/bundle --image skimage:astronaut "What is in this picture?"
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from runtime import cli
from runtime.errors import UserError
from runtime.images import open_image
from runtime.protocol import GenerationConfig, GenerationRequest


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.chat", description=__doc__.split("\n")[0])
    p.add_argument("question", help="the question (wrapped in the bundle's chat template unless --raw)")
    p.add_argument("--bundle", required=True, help="bundle directory (written by python -m compile.export)")
    p.add_argument("--image", help="an image file or skimage:NAME (e.g. skimage:astronaut)")
    p.add_argument("--raw", action="store_true", help="continue the text as is, without the chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus size when sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--provider", action="append", dest="providers",
                   help="execution provider, in priority order (repeatable): cpu (default), cuda, tensorrt")
    p.add_argument("--threads", type=int, help="intra-op threads (default: every core this process may use)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from runtime.generate import BundleGenerator

    if args.max_new_tokens < 1 or args.temperature <= 0 or not 0 < args.top_p <= 1:
        raise UserError("--max-new-tokens must be >= 1, --temperature > 0 and --top-p in (0, 1]")
    image = open_image(args.image) if args.image else None
    t0 = time.perf_counter()
    generator = BundleGenerator.open(args.bundle, providers=tuple(args.providers or ("cpu",)), threads=args.threads)
    t1 = time.perf_counter()
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                              temperature=args.temperature, top_p=args.top_p if args.sample else 1.0, seed=args.seed)
    [result] = generator.generate([GenerationRequest(args.question, image, chat=not args.raw)], config)
    t2 = time.perf_counter()
    print(result.text)
    [timing] = generator.last_timings
    print(f"[{generator.spec.model} bundle on {', '.join(generator.backend.describe()['providers'])}: loaded in "
          f"{t1 - t0:.1f} s, {len(result.token_ids)} tokens in {t2 - t1:.2f} s "
          f"(prefill {timing.prefill_s * 1e3:.0f} ms, "
          f"decode {timing.decode_tokens_per_s:.1f} tok/s), stopped by {result.finish_reason}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
