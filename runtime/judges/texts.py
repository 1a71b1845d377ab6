"""Input checking shared by every judge: a judge takes a sequence of strings and nothing else."""
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
