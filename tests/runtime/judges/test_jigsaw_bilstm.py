"""The Jigsaw BiLSTM judge: the wheel's published reference scores, batching, truncation side, canonicalisation."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.judges.jigsaw_bilstm import LABELS, MAXLEN, JigsawBiLSTMJudge, canonical


@pytest.fixture(scope="module")
def judge() -> JigsawBiLSTMJudge:
    return JigsawBiLSTMJudge()


def test_reference_scores_of_the_wheel(judge: JigsawBiLSTMJudge) -> None:
    # toxic-comment-classifier 0.3.0's README, produced by its Keras model.
    scores = dict(zip(LABELS, judge.label_scores(["You are so dumb and stupid!"])[0]))
    assert scores["toxic"] == pytest.approx(0.9889402985572815, abs=1e-4)
    assert scores["insult"] == pytest.approx(0.8664075136184692, abs=1e-4)
    assert scores["obscene"] == pytest.approx(0.620429277420044, abs=1e-4)
    assert scores["severe_toxic"] == pytest.approx(0.07256772369146347, abs=1e-4)
    # the README's overall scores are the mean of the six labels
    means = judge.label_scores(["I hate you so much!", "Have a nice day :)", "You're disgusting!"]).mean(axis=1)
    np.testing.assert_allclose(means, [0.1395, 0.0115, 0.3110], atol=1e-4)
    assert judge.score(["You are so dumb and stupid!"])[0] == pytest.approx(scores["toxic"])


def test_batched_equals_one_at_a_time(judge: JigsawBiLSTMJudge) -> None:
    texts = ["You are an idiot", "", "The weather is lovely today.", "shut up " * 80, "ok"]
    batched = JigsawBiLSTMJudge(batch_size=2).score(texts)
    single = np.array([judge.score([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-6)
    assert batched.shape == (5,) and np.all((batched >= 0) & (batched <= 1))
    assert judge.score([]).shape == (0,)


def test_long_texts_keep_their_last_words(judge: JigsawBiLSTMJudge) -> None:
    filler = "the committee will meet on tuesday to discuss the budget " * 20  # > MAXLEN words
    assert len(filler.split()) > MAXLEN
    toxic_end, toxic_start = judge.score([filler + "you stupid idiot", "you stupid idiot " + filler])
    assert toxic_end > 0.5 > toxic_start
    assert toxic_start == pytest.approx(judge.score([filler])[0], abs=1e-6)


def test_typographic_apostrophes_read_like_ascii(judge: JigsawBiLSTMJudge) -> None:
    assert canonical("You\u2019re \u201cnice\u201d \uff41") == "You're \"nice\" a"
    np.testing.assert_allclose(judge.score(["You\u2019re disgusting!"]), judge.score(["You're disgusting!"]))


def test_bad_input_is_a_user_error(judge: JigsawBiLSTMJudge) -> None:
    with pytest.raises(UserError, match="one string"):
        judge.score("a single string")
    with pytest.raises(UserError, match="item 1 is int"):
        judge.score(["fine", 3])
    assert judge.describe()["name"] == "bilstm" and judge.describe()["asset"] == "toxic-comment-classifier==0.3.0"
