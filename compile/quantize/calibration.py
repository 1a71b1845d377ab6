"""Decoder inputs for static (activation) calibration, computed with the source bundle itself.

Image prompts with captions from the scenes' training split and corpus paragraphs that the checks
(compile.quantize.check) do not use; each becomes one prefill feed (batch 1, empty past), so activation
ranges come from the same embeddings the deployed decoder sees.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from compile.quantize.check import QUESTIONS, CheckItem, item_ids
from runtime.generate import BundleGenerator

CHECK_TEXTS = 32  # corpus paragraphs reserved for checks and perplexity


def calibration_items(n_images: int = 8, n_texts: int = 8) -> list[CheckItem]:
    from runtime.mmtoxicqa import corpus
    from runtime.scenes import scenes

    items = [CheckItem(sc.caption, sc.image, QUESTIONS[i % len(QUESTIONS)])
             for i, sc in enumerate(scenes("train", n_images, seed=1))]
    texts = corpus.load_corpus(corpus.default_corpus(), n_texts=CHECK_TEXTS + n_texts)[CHECK_TEXTS:]
    return items + [CheckItem(t) for t in texts[:n_texts]]


def prefill_feed(gen: BundleGenerator, ids: list[int], images: list[Any]) -> dict[str, Any]:
    """The standard decoder's feed for one prompt from scratch: inputs_embeds, mask, positions, empty past."""
    spec = gen.spec
    d = spec.decoder
    embeds = gen.prompt_embeds(ids, images)[None]
    n = len(ids)
    feed = {d.inputs_embeds: embeds, d.attention_mask: np.ones((1, n), np.int64),
            d.position_ids: np.arange(n, dtype=np.int64)[None]}
    empty = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), dtype=embeds.dtype)
    feed.update({name: empty for name in d.past_names(spec.num_layers)})
    return feed


def decoder_feeds(bundle_dir: str | os.PathLike, items: list[CheckItem], threads: int | None = None) -> list[dict[str, Any]]:
    """One prefill feed of the decoder per item (prefill_feed)."""
    gen = BundleGenerator.open(bundle_dir, threads=threads)
    return [prefill_feed(gen, item_ids(gen, item), [item.image] if item.image is not None else []) for item in items]
