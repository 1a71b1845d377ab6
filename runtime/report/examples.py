"""Example generations for the report: which items to show, and their texts with toxic words masked.

Items are those every run with generation rows answered (first sample). Chosen: the items with the highest
toxicity in any run, then those where the runs disagree most, then up to two benign and two visual items for
fluency; shown in benchmark order. Prompts and responses are masked (`mask.Masker`); without a word list,
responses judged harmful and the prompts of toxic-eliciting items are withheld instead.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from runtime.mmtoxicqa.items import CONDITIONS, TOXIC_CONDITIONS
from runtime.mmtoxicqa.reports import Run
from runtime.report.mask import Masker

PROMPT_CHARS = 240
RESPONSE_CHARS = 320
WITHHELD = "[withheld: judged harmful, and no word list to mask it]"
_BREAKS = re.compile(r"[ \t]*(?:\r?\n[ \t]*)+")


@dataclass(frozen=True)
class Cell:
    """One run's response to an example item, ready to show."""

    text: str
    toxicity: float
    harmful: bool
    degenerate: bool
    masked_words: int


@dataclass(frozen=True)
class Example:
    """One item with the masked prompt and each run's response (None for runs without generation rows)."""

    id: str
    condition: str
    category: str
    prompt: str
    cells: tuple[Cell | None, ...]


def _clip(text: str, limit: int, tail: bool = False) -> str:
    """`text` with line breaks shown as a return sign, cut to `limit` characters (its end when `tail`)."""
    text = _BREAKS.sub(" \u23ce ", text.strip())
    if len(text) <= limit:
        return text
    return "..." + text[-limit:] if tail else text[:limit] + "..."


def _first_samples(run: Run) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in run.rows or [] if row.get("sample", 0) == 0}


def choose(runs: Sequence[Run], n: int = 12) -> list[str]:
    """Ids of up to `n` items to show (see the module docstring)."""
    tables = [_first_samples(r) for r in runs if r.rows]
    if not tables:
        return []
    common = set(tables[0]).intersection(*tables[1:])
    rows = {i: [t[i] for t in tables] for i in common}
    toxic = [i for i in common if rows[i][0]["condition"] in TOXIC_CONDITIONS]
    by_max = sorted(toxic, key=lambda i: (-max(r["toxicity"] for r in rows[i]), i))
    by_spread = sorted(toxic, key=lambda i: (-(max(r["toxicity"] for r in rows[i]) - min(r["toxicity"] for r in rows[i])), i))
    extra = [sorted(i for i in common if rows[i][0]["condition"] == c)[:2] for c in ("benign", "visual")]
    budget = max(0, n - sum(len(e) for e in extra))
    picked: list[str] = []
    for i in [x for pair in zip(by_max, by_spread) for x in pair]:
        if len(picked) >= budget:
            break
        if i not in picked:
            picked.append(i)
    picked += [i for e in extra for i in e][: n - len(picked)]
    order = {c: k for k, c in enumerate(CONDITIONS)}
    return sorted(picked, key=lambda i: (order.get(rows[i][0]["condition"], len(order)), i))


def build(runs: Sequence[Run], masker: Masker | None, threshold: float, n: int = 12) -> list[Example]:
    """The chosen examples, masked, with one cell per run (in run order)."""
    tables = [_first_samples(r) if r.rows else None for r in runs]
    out = []
    for item_id in choose(runs, n):
        first = next(t[item_id] for t in tables if t is not None)
        prompt = _clip(first.get("prompt") or "", PROMPT_CHARS, tail=True)
        if masker is not None:
            prompt = masker.mask(prompt)
        elif first["condition"] in TOXIC_CONDITIONS:
            prompt = "[withheld: no word list to mask it]"
        cells: list[Cell | None] = []
        for table in tables:
            if table is None:
                cells.append(None)
                continue
            row = table[item_id]
            harmful = bool(row.get("harmful", row["toxicity"] >= threshold))
            text = _clip(row["response"], RESPONSE_CHARS)
            count = masker.count(text) if masker is not None else 0
            if masker is not None:
                text = masker.mask(text)
            elif harmful:
                text = WITHHELD
            cells.append(Cell(text, float(row["toxicity"]), harmful, bool(row.get("degenerate", False)), count))
        out.append(Example(item_id, first["condition"], str(first.get("category", "")), prompt, tuple(cells)))
    return out
