"""The one interface every backend implements: run a bundle's three graphs (vision, embed, decoder).

The generation loop (runtime.generate) only talks to this interface, so ONNX Runtime (runtime.backends.ort)
and TensorRT backends are interchangeable behind it. Arrays crossing the interface are numpy on the host;
the KV cache is an opaque `KVCache` whose tensors stay wherever the backend keeps them (device memory on a
GPU), so a decode step moves only the new token's embedding, the mask and the logits across.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class KVCache:
    """Past keys and values of every layer for a batch: `length` positions, tensors owned by the backend."""

    batch: int
    length: int
    tensors: tuple[Any, ...]


class Backend(ABC):
    """Runs the vision, embed and decoder graphs of one bundle."""

    name: str
    left_padding: bool = True  # whether a batch of prompts of different lengths may be left-padded into one run

    @abstractmethod
    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        """Pixel values [n, 3, S, S] float32 -> image embeddings [n, num_image_tokens, hidden]."""

    @abstractmethod
    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """Token ids [b, s] int64 (no image ids) -> embeddings [b, s, hidden]."""

    @abstractmethod
    def empty_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        """A KV cache with no positions, for the prefill of a batch of `batch` sequences; `capacity` is how many
        positions the generation will reach (a hint for backends that preallocate)."""

    @abstractmethod
    def decode(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
               cache: KVCache, last_only: bool = True) -> tuple[np.ndarray, KVCache]:
        """One decoder run: (logits, the cache extended by the new positions).

        `attention_mask` [b, cache.length + s] int64 covers past and new positions; `position_ids` [b, s] int64.
        Logits are float32 [b, V] for the last position with `last_only`, else [b, s, V]. They may be a view of
        a buffer the backend reuses: valid until its next `decode` call (copy them to keep them longer).
        """

    def token_stepper(self, cache: KVCache,
                      attention_mask: np.ndarray) -> Callable[[Sequence[int]], np.ndarray] | None:
        """An optional fast path for the decode steps after a prefill: a function that takes one token id per
        sequence, runs one step and returns the last-position logits [b, V] float32 (valid until its next call),
        keeping the cache itself. `cache` is the prefill's (the caller must not use it again); `attention_mask`
        [b, capacity] int64 is the whole generation's mask, of which step n uses the first cache.length + n + 1
        columns. None (the default): the caller steps through `embed` and `decode`."""
        return None

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The backend, its devices and settings, for reports."""
