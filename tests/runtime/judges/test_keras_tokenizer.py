"""The Keras tokenizer conversion: restricted unpickling, and Keras' text_to_word_sequence / pad_sequences."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from runtime import assets
from runtime.errors import UserError
from runtime.judges.keras_tokenizer import FORMAT, KerasTokenizer, convert_pickle


def _config(words: dict[str, int]) -> dict:
    return {"format": FORMAT, "filters": '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n', "split": " ", "lower": True,
            "num_words": 5, "oov_index": None, "word_index": words}


def test_keras_word_rules() -> None:
    tok = KerasTokenizer(_config({"you": 1, "are": 2, "you're": 3, "dumb": 4, "rare": 7}))
    assert tok.words("You're  DUMB!!\tyes-no\u00a0x") == ["you're", "dumb", "yes", "no\u00a0x"]
    assert tok.encode("You are dumb, you're RARE unknown") == [1, 2, 4, 3]  # rank >= num_words and unknown dropped
    padded = tok.pad(["you are dumb", "", "dumb " * 7], maxlen=4)
    np.testing.assert_array_equal(padded, [[0, 1, 2, 4], [0, 0, 0, 0], [4, 4, 4, 4]])
    with pytest.raises(UserError, match="format"):
        KerasTokenizer({"format": "other"})


def test_convert_the_wheels_tokenizer() -> None:
    config = convert_pickle(assets.extract("toxic-comment-classifier", "toxic_classifier/model/tokenizer.pickle"))
    assert config["num_words"] == 20000 and config["oov_index"] is None and config["lower"]
    assert sorted(config["word_index"].values()) == list(range(1, 20000))  # only the words the model can see
    assert config["word_index"]["the"] == 1


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/should-not-exist-sgm"),))


def test_restricted_unpickler_refuses_other_classes(tmp_path: Path) -> None:
    bad = tmp_path / "evil.pickle"
    bad.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UserError, match="refusing to load pathlib"):
        convert_pickle(bad)
    assert not Path("/tmp/should-not-exist-sgm").exists()
    plain = tmp_path / "dict.pickle"
    plain.write_bytes(pickle.dumps({"word_index": {}}))
    with pytest.raises(UserError, match="not a Keras Tokenizer"):
        convert_pickle(plain)
