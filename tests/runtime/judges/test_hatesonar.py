"""The HateSonar judge in ONNX Runtime, with its locale fixed."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.judges.hatesonar import CLASSES, HateSonarJudge


@pytest.fixture(scope="module")
def judge() -> HateSonarJudge:
    return HateSonarJudge()


def test_offensive_scores_above_neutral(judge: HateSonarJudge) -> None:
    offensive, neutral = judge.score(["shut up you stupid bitch", "the train leaves at nine in the morning"])
    assert offensive > 0.9 and neutral < 0.5 and offensive > neutral


def test_probabilities_and_batching(judge: HateSonarJudge) -> None:
    texts = ["You are a stupid IDIOT", "", "!!!", "lovely weather", "Ünïcödé words ok", "bitch " * 50]
    classes = judge.class_scores(texts)
    assert classes.shape == (len(texts), len(CLASSES))
    np.testing.assert_allclose(classes.sum(axis=1), 1.0, atol=1e-5)
    scores = judge.score(texts)
    assert np.all((scores >= 0) & (scores <= 1))
    np.testing.assert_allclose(scores, 1.0 - classes[:, CLASSES.index("neither")])
    one_by_one = np.array([judge.score([t])[0] for t in texts])
    np.testing.assert_allclose(HateSonarJudge(batch_size=4).score(texts), one_by_one, atol=1e-6)
    assert judge.score(["you are a bitch"])[0] > judge.score(["you are a friend"])[0]
