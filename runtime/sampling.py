"""Next-token selection in numpy, shared by every backend so greedy and seeded sampling agree across them."""
from __future__ import annotations

from typing import Callable, Sequence

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
        keep = nucleus(p, config.top_p)
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))


NUCLEUS_CANDIDATES = (1024, 16384)  # heads sorted first, in turn; the full sort runs only when both fall short


def nucleus(p: np.ndarray, top_p: float) -> np.ndarray:
    """The top-p set of probabilities `p`: the shortest prefix of the tokens in descending probability (ties by
    token id, as a stable sort orders them) whose cumulative probability reaches `top_p`.

    Exactly `np.argsort(-p, kind="stable")`'s prefix, without sorting a 262k vocabulary each step (40 ms, the
    largest cost of a sampled token on a CPU): the tokens at or above the k-th largest (k in NUCLEUS_CANDIDATES)
    probability come first in that order, so their own stable sort is its head and their cumulative sum its
    cumulative sum, summed in the same order."""
    for k in NUCLEUS_CANDIDATES:
        if p.size <= 2 * k:
            break
        threshold = np.partition(p, p.size - k)[p.size - k]
        head = np.flatnonzero(p >= threshold)
        head = head[np.argsort(-p[head], kind="stable")]
        n = int(np.searchsorted(np.cumsum(p[head]), top_p))
        if n < head.size:
            return head[: n + 1]
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    return order[: int(np.searchsorted(cum, top_p) + 1)]


def token_loop(logits: np.ndarray, step: Callable[[list[int]], np.ndarray], config: GenerationConfig,
               eos_token_ids: Sequence[int], pad_token_id: int,
               first_index: int = 0) -> tuple[list[tuple[list[int], str]], int]:
    """The decode loop shared by the PyTorch model and the runtime: from the prefill's last-position logits
    [b, V], pick each request's token from its own stream `request_rng(seed, first_index + i)`, feed a finished
    request the pad token, and ask `step(tokens)` for the next logits [b, V] until every request ends or
    `max_new_tokens` are out. Returns (token ids, finish reason "eos" | "length") per request and the steps run."""
    b = logits.shape[0]
    eos = frozenset(eos_token_ids)
    rngs = [request_rng(config.seed, first_index + i) for i in range(b)]
    tokens: list[list[int]] = [[] for _ in range(b)]
    finished = [False] * b
    reasons = ["length"] * b
    steps = 0
    for n in range(config.max_new_tokens):
        chosen = []
        for i in range(b):
            t = pad_token_id if finished[i] else select(logits[i], config, rngs[i])
            if not finished[i]:
                if t in eos:
                    finished[i], reasons[i] = True, "eos"
                else:
                    tokens[i].append(t)
            chosen.append(t)
        if all(finished) or n == config.max_new_tokens - 1:
            break
        logits = step(chosen)
        steps += 1
    return list(zip(tokens, reasons)), steps
