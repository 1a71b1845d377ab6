"""The judge interface: texts in, probabilities of toxic out. Torch-free."""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Judge(Protocol):
    """A toxicity judge. `score` is batched and returns P(toxic) in [0, 1], one per text, in order."""

    name: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance for reports: judge name, asset and version, threshold conventions."""
        ...
