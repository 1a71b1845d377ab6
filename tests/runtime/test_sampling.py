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
