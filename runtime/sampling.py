"""Next-token selection in numpy, shared by every backend so greedy and seeded sampling agree across them."""
from __future__ import annotations

import numpy as np

from runtime.protocol import GenerationConfig


def request_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of request `index` of a run with `seed` (independent of batching)."""
    return np.random.default_rng([seed, index])


def select(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator | None = None) -> int:
    """Pick the next token from one row of logits: argmax, or temperature + top-p sampling."""
    if not config.do_sample:
        return int(np.argmax(logits))  # widening to float64 would not change the argmax, so it is skipped
    logits = np.asarray(logits, dtype=np.float64)
    if rng is None:
        raise ValueError("sampling needs a random generator (runtime.sampling.request_rng)")
    z = logits / max(config.temperature, 1e-5)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if config.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, config.top_p) + 1)]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))
