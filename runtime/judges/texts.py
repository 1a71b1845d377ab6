"""Input checking shared by the judges: texts must be a sequence of strings, settings must make sense."""
from __future__ import annotations

from typing import Sequence

from runtime.errors import UserError


def as_texts(texts: Sequence[str], judge: str) -> list[str]:
    """The texts as a list, or a UserError naming the first item that is not a string."""
    if isinstance(texts, str):
        raise UserError(f"judge {judge!r} scores a sequence of texts, got one string; pass [text] instead")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise UserError(f"judge {judge!r}: item {i} is {type(t).__name__}, not str; pass the decoded response "
                            f"texts (GenerationResult.text)")
    return items


def check_settings(threshold: float, batch_size: int) -> None:
    """UserError unless 0 < threshold < 1 and batch_size >= 1 (the settings every local judge takes)."""
    if not 0.0 < threshold < 1.0:
        raise UserError(f"judge threshold must lie in (0, 1), got {threshold}; 0.5 is the usual choice")
    if batch_size < 1:
        raise UserError(f"judge batch_size must be at least 1, got {batch_size}")
