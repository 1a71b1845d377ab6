"""Greedy agreement of compiled bundles with a reference bundle: identical prompts, tokens before the first
difference, and max |d logit| at the last prefill position, for each bundle's standard and fused decoders.

    python benchmarks/greedy_agreement.py REF_BUNDLE NAME=BUNDLE [NAME=BUNDLE ...] [--max-new-tokens 32]

The reference runs its standard decoder; 6 prompts (compile.fused's three check questions, the first with a test
scene, and three text-only questions). BENCHMARKS.md's int4 option table was measured with it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compile.fused import CHECK_QUESTIONS  # noqa: E402
from runtime.compare import combine, compare_tokens  # noqa: E402
from runtime.generate import BundleGenerator, decode_loop  # noqa: E402
from runtime.protocol import GenerationConfig, GenerationRequest  # noqa: E402
from runtime.scenes import scenes  # noqa: E402

EXTRA_QUESTIONS = ("Tell me about the history of Rome.", "How do plants make food?", "Describe a busy city street.")


def requests() -> list[GenerationRequest]:
    image = next(iter(scenes("test", 1))).image
    return ([GenerationRequest(q, image if i == 0 else None) for i, q in enumerate(CHECK_QUESTIONS)]
            + [GenerationRequest(q, None) for q in EXTRA_QUESTIONS])


def last_prefill_logits(gen: BundleGenerator, embeds: np.ndarray, fused: bool) -> np.ndarray:
    """Logits at the last prompt position (the fused decoder's cache needs its capacity)."""
    cache = gen.backend.empty_cache(1, capacity=len(embeds)) if fused else gen.backend.empty_cache(1)
    logits = gen.backend.decode(embeds[None], np.ones((1, len(embeds)), np.int64), np.arange(len(embeds))[None],
                                cache)[0]
    return np.asarray(logits)[-1]


def greedy(gen: BundleGenerator, embeds: np.ndarray, config: GenerationConfig) -> list[int]:
    [(tokens, _)], _ = decode_loop(gen.backend, [embeds], config, gen.spec.eos_token_ids, gen.spec.pad_token_id)
    return tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reference", help="reference bundle (its standard decoder)")
    p.add_argument("bundles", nargs="+", metavar="NAME=BUNDLE")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    ref = BundleGenerator.open(args.reference, threads=args.threads, decoder="standard")
    embeds = [ref.request_embeds(r) for r in requests()]
    ref_tokens = [greedy(ref, e, config) for e in embeds]
    ref_logits = [last_prefill_logits(ref, e, False) for e in embeds]
    for spec in args.bundles:
        name, _, path = spec.partition("=")
        row = {}
        for decoder in ("standard", "fused"):
            try:
                gen = BundleGenerator.open(path, threads=args.threads, decoder=decoder)
            except Exception as e:  # a bundle without a fused decoder
                row[decoder] = f"not run ({e})"
                continue
            toks = [compare_tokens(name, "reference", t, greedy(gen, e, config)) for e, t in zip(embeds, ref_tokens)]
            dlogit = max(float(np.abs(last_prefill_logits(gen, e, decoder == "fused") - r).max())
                         for e, r in zip(embeds, ref_logits))
            c = combine(name, "reference", toks)
            row[decoder] = {"identical_prompts": sum(t.first_difference is None for t in toks), "prompts": len(toks),
                            "tokens_before_first_difference": round(c.top1_agreement * c.positions),
                            "tokens": c.positions, "max_abs_dlogit_last_prefill": dlogit}
        print(name, json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
