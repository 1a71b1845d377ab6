"""The generation protocol every backend implements: the PyTorch model zoo and the compiled runtime alike.

The MM-TOXIC-QA runner, the judges' consumers and the regression gate only ever see these types, so a
benchmark run on a PyTorch model and on a compiled bundle are the same code path.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

from PIL import Image

from runtime.errors import UserError


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


def check_prompts(lengths: Sequence[int], max_new_tokens: int, context_length: int | None) -> None:
    """Refuse, before anything runs, a prompt of no tokens and one that with `max_new_tokens` would run past the
    model's context (`context_length` positions; None = unknown, e.g. a bundle older than the field)."""
    for i, n in enumerate(lengths):
        which = f"prompt {i + 1} of {len(lengths)}" if len(lengths) > 1 else "the prompt"
        if n == 0:
            raise UserError(f"{which} has no tokens (an empty text); give some text to continue or a question")
        if context_length is not None and n + max_new_tokens > context_length:
            raise UserError(f"{which} has {n} tokens and asks for {max_new_tokens} new ones, but the model's context "
                            f"holds {context_length} positions; shorten the prompt to at most "
                            f"{max(context_length - max_new_tokens, 0)} tokens or lower max_new_tokens")


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
