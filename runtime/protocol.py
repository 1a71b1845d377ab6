"""The generation protocol every backend implements: the PyTorch model zoo and the compiled runtime alike.

The MM-TOXIC-QA runner, the judges' consumers and the regression gate only ever see these types, so a
benchmark run on a PyTorch model and on a compiled bundle are the same code path.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

from PIL import Image


@dataclass(frozen=True)
class GenerationRequest:
    """One user turn: a question and an optional image. With `chat` (the default) the model's chat template
    wraps the prompt; without it the prompt is continued as raw text (RealToxicityPrompts-style)."""

    prompt: str
    image: Image.Image | None = None
    chat: bool = True


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. Greedy unless `do_sample`; sampling is seeded per request, so results do not
    depend on batch composition."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationResult:
    """The response text, its token ids, and why generation stopped ("eos" or "length")."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str


@runtime_checkable
class Generator(Protocol):
    """Anything that answers requests: `calib.models` (PyTorch) or `runtime` bundles (ONNX Runtime, TensorRT)."""

    def generate(self, requests: Sequence[GenerationRequest], config: GenerationConfig) -> list[GenerationResult]:
        """Answer each request (batched internally), in order."""
        ...

    def nll(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """Teacher-forced negative log-likelihood of each plain text: (sum over predicted tokens, token count)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance for reports: model name or bundle, fingerprint, backend, dtype."""
        ...
