"""The neutral corpus for self-perplexity (fluency): WikiText-2 when present, or any plain-text file.

The product never ships WikiText: pass `--ppl-corpus FILE`, or set $SGM_PPL_CORPUS, or have the developers'
shared data folder beside the repository (../shared/data/wikitext-2/test.txt).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from runtime.artifacts import sha256_file
from runtime.errors import UserError

CORPUS_ENV = "SGM_PPL_CORPUS"
N_TEXTS = 32
MAX_WORDS = 96
MIN_WORDS = 20
_DETOK = [(re.compile(r" @(.)@ "), r"\1"), (re.compile(r" ([.,;:!?)'])"), r"\1"), (re.compile(r"\( "), "(")]


def default_corpus() -> Path | None:
    """$SGM_PPL_CORPUS, else the shared WikiText-2 test set beside the repository, else None."""
    env = os.environ.get(CORPUS_ENV)
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext-2" / "test.txt"
    return shared if shared.is_file() else None


def _clean(paragraph: str) -> str:
    for pattern, repl in _DETOK:
        paragraph = pattern.sub(repl, paragraph)
    return paragraph.strip()


def load_corpus(path: str | os.PathLike, n_texts: int = N_TEXTS, max_words: int = MAX_WORDS) -> list[str]:
    """The first `n_texts` paragraphs of at least MIN_WORDS words, each cut to `max_words` words.

    Paragraphs are non-empty lines; WikiText headings (`= Title =`) and paragraphs with `<unk>` are skipped and
    WikiText's tokenisation (` @-@ `, spaces before punctuation) is undone, so the text reads as plain prose.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"perplexity corpus {path} does not exist; pass a plain-text file with --ppl-corpus")
    texts = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("=") or "<unk>" in line:
                continue
            ws = _clean(line).split()
            if len(ws) < MIN_WORDS:
                continue
            texts.append(" ".join(ws[:max_words]))
            if len(texts) >= n_texts:
                break
    if not texts:
        raise UserError(f"{path} has no paragraph of at least {MIN_WORDS} words; pass a plain-text corpus")
    return texts


def corpus_info(path: str | os.PathLike, texts: list[str]) -> dict[str, object]:
    """Provenance of the corpus used, for reports."""
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path), "n_texts": len(texts),
            "longest_text_words": max(len(t.split()) for t in texts)}
