"""Next-token selection shared by every backend."""
from __future__ import annotations

import numpy as np

from runtime.protocol import GenerationConfig
from runtime.sampling import request_rng, select


def test_greedy_is_argmax():
    assert select(np.array([0.1, 3.0, -1.0]), GenerationConfig()) == 1


def test_top_p_never_picks_outside_the_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    cfg = GenerationConfig(do_sample=True, top_p=0.75)
    rng = request_rng(0, 0)
    picks = {select(logits, cfg, rng) for _ in range(500)}
    assert picks == {0, 1}


def test_sampling_follows_the_distribution_and_is_seeded():
    logits = np.log(np.array([0.7, 0.2, 0.1]))
    cfg = GenerationConfig(do_sample=True)
    draws = [select(logits, cfg, request_rng(1, 0)) for _ in range(3)]
    assert len(set(draws)) == 1  # same stream, same first draw
    rng = request_rng(1, 0)
    freq = np.bincount([select(logits, cfg, rng) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.03)


def test_nucleus_is_the_stable_sort_prefix_without_sorting_the_vocabulary():
    """The partial sort returns exactly the full stable sort's top-p prefix: peaked, flat (the fallback to the full
    sort), tied (ties ordered by token id) and small vocabularies."""
    from runtime.sampling import NUCLEUS_CANDIDATES, nucleus

    def full_sort(p, top_p):
        order = np.argsort(-p, kind="stable")
        return order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]

    rng = np.random.default_rng(0)
    sizes = set()
    for v, scale, tied in [(50, 3.0, False), (40_000, 8.0, False), (40_000, 0.3, False), (70_000, 6.0, True),
                           (70_000, 2.0, False), (40_000, 0.0, False)]:
        logits = rng.standard_normal(v) * scale
        if tied:
            logits = np.round(logits)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        for top_p in (0.3, 0.9, 0.999999):
            want = full_sort(p, top_p)
            sizes.add(min(len(want), NUCLEUS_CANDIDATES[-1] + 1))
            np.testing.assert_array_equal(nucleus(p, top_p), want)
    assert min(sizes) < NUCLEUS_CANDIDATES[0] < max(sizes)  # both the partial sort and the fallback ran
