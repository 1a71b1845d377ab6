"""Ask a zoo model one question about one image (or none) and print its answer.

    python -m calib.chat --model smol-llava --image skimage:astronaut "What is in this picture?"
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from runtime import cli
from runtime.images import open_image
from runtime.protocol import GenerationConfig, GenerationRequest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calib.chat", description=__doc__.split("\n")[0])
    p.add_argument("question", help="the question (wrapped in the model's chat template unless --raw)")
    p.add_argument("--model", default="smol-llava", help="smol-llava (default), llava, tiny-random-llava or a path")
    p.add_argument("--image", help="an image file or skimage:NAME (e.g. skimage:astronaut)")
    p.add_argument("--raw", action="store_true", help="continue the text as is, without the chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample (temperature 1, top-p 0.9) instead of greedy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from calib.models import load_model

    image = open_image(args.image) if args.image else None
    t0 = time.perf_counter()
    model = load_model(args.model)
    t1 = time.perf_counter()
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                              top_p=0.9 if args.sample else 1.0, seed=args.seed)
    [result] = model.generate([GenerationRequest(args.question, image, chat=not args.raw)], config)
    t2 = time.perf_counter()
    print(result.text)
    print(f"[{args.model}: loaded in {t1 - t0:.1f} s, {len(result.token_ids)} tokens in {t2 - t1:.1f} s, "
          f"stopped by {result.finish_reason}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
