"""How far a transformed bundle moved from its source: teacher-forced logits on the same token sequences.

Each bundle embeds the tokens with its own embed (and vision) graph, so quantized embeddings count too.
Measured on image prompts with their captions (synthetic scenes, runtime.scenes) and plain paragraphs of the
perplexity corpus (runtime.mmtoxicqa.corpus.default_corpus): top-1 agreement of every predicted position, the
largest |logit difference|, and each side's mean negative log-likelihood of the actual next tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from runtime.compare import Comparison, combine, compare_arrays
from runtime.generate import BundleGenerator

QUESTIONS = ("What is in the image?", "Describe the picture in one sentence.")
NAME = "teacher-forced: new bundle vs source"
WHAT = "image captions and corpus paragraphs"


@dataclass(frozen=True)
class CheckItem:
    """A token sequence source: a chat prompt about an image followed by its caption, or a plain text."""

    text: str
    image: Any = None
    question: str | None = None


def check_items(n_images: int = 4, n_texts: int = 8) -> list[CheckItem]:
    """Image + caption items from held-out synthetic scenes, and the perplexity corpus's first paragraphs."""
    from runtime.mmtoxicqa import corpus
    from runtime.scenes import scenes

    items = [CheckItem(sc.caption, sc.image, QUESTIONS[i % len(QUESTIONS)])
             for i, sc in enumerate(scenes("test", n_images))]
    texts = corpus.load_corpus(corpus.default_corpus(), n_texts=n_texts)
    return items + [CheckItem(t) for t in texts[:n_texts]]


def item_ids(gen: BundleGenerator, item: CheckItem) -> list[int]:
    if item.image is None:
        return gen.tokenizer.encode(item.text)
    prompt = gen.spec.prompt.render(item.question or QUESTIONS[0], True)
    return gen.tokenizer.prompt_ids(prompt + " " + item.text)


def logits(gen: BundleGenerator, item: CheckItem) -> tuple[np.ndarray, np.ndarray]:
    """(logits [s, V] float32 for every position, the ids) of one item, teacher-forced."""
    ids = item_ids(gen, item)
    embeds = gen.prompt_embeds(ids, [item.image] if item.image is not None else [])[None]
    n = len(ids)
    out, _ = gen.backend.decode(embeds, np.ones((1, n), np.int64), np.arange(n, dtype=np.int64)[None],
                                gen.backend.empty_cache(1), last_only=False)
    return out[0].astype(np.float32), np.asarray(ids)


def _nll(z: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
    return logz - z[np.arange(len(targets)), targets]


def agreement(source: BundleGenerator, new: BundleGenerator, items: Sequence[CheckItem]) -> Comparison:
    """Teacher-forced comparison of `new` against `source` on `items` (positions that predict a next token),
    with each side's mean NLL of the actual next tokens."""
    parts: list[Comparison] = []
    nll_s: list[np.ndarray] = []
    nll_n: list[np.ndarray] = []
    for item in items:
        a, ids = logits(source, item)
        b, ids_b = logits(new, item)
        if not np.array_equal(ids, ids_b):
            raise ValueError("the two bundles tokenize differently; they are not the same model")
        keep = ids[1:] != source.spec.image_token_id  # positions that predict a text token
        a, b, targets = a[:-1][keep], b[:-1][keep], ids[1:][keep]
        parts.append(compare_arrays(NAME, WHAT, a, b))
        nll_s.append(_nll(a, targets))
        nll_n.append(_nll(b, targets))
    return combine(NAME, f"{WHAT} ({len(items)} items)", parts, mean_nll_source=float(np.concatenate(nll_s).mean()),
                   mean_nll_new=float(np.concatenate(nll_n).mean()))
