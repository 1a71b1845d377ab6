"""Fixtures of the alignment tests: a few samples encoded for smol-llava, with their vision features."""
from __future__ import annotations

import pytest

from calib.align import data, features, packing
from calib.align.forward import FrozenLM


@pytest.fixture(scope="module")
def few(smol_llava):
    """Two scenes and one photo: samples, layout, encoded samples, fp16 features and the frozen LM."""
    samples = data.scene_samples(2, seed=0) + data.photo_samples(1, seed=0)[:1]
    layout, encoded = packing.encode_samples(smol_llava, samples)
    feats = features.encode(smol_llava.module.vision_tower, [s.image for s in samples], progress=False)
    return samples, layout, encoded, feats, FrozenLM(smol_llava, layout)
