"""The Keras 1/2 legacy `Tokenizer` as plain data: a restricted conversion from its pickle, and its inference.

The BiLSTM judge's wheel ships its word index as a pickled `keras.src.legacy.preprocessing.text.Tokenizer`.
We never unpickle it plainly: `convert_pickle` admits only the classes that file needs (the Tokenizer itself
becomes an inert stub whose attributes are read as data) and returns a JSON-serialisable config holding the
`num_words - 1` words the model can see. `KerasTokenizer` then mirrors Keras' `texts_to_sequences` and
`pad_sequences` exactly: lowercase, every filter character replaced by the split character, split on that
character only (other whitespace stays inside words), words ranked >= num_words dropped (no OOV token),
sequences left-padded with 0 and truncated from the front (Keras' defaults `padding="pre"`,
`truncating="pre"`: a long text keeps its last `maxlen` words).
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.errors import UserError

TOKENIZER_CLASS = ("keras.src.legacy.preprocessing.text", "Tokenizer")
FORMAT = "keras-legacy-tokenizer/1"


class _TokenizerStub:
    """Stands in for the pickled Keras Tokenizer: receives its attributes, runs no code."""


_ALLOWED: dict[tuple[str, str], Any] = {
    TOKENIZER_CLASS: _TokenizerStub,
    ("keras.preprocessing.text", "Tokenizer"): _TokenizerStub,
    ("keras_preprocessing.text", "Tokenizer"): _TokenizerStub,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "int"): int,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a Keras Tokenizer") from None


def convert_pickle(path: str | Path) -> dict[str, Any]:
    """Read a pickled Keras Tokenizer safely and return its inference config as plain JSON-able data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is not a pickled Keras Tokenizer ({e}); delete it from the cache so it is extracted again") from e
    if not isinstance(obj, _TokenizerStub):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a Keras Tokenizer; delete it from the cache")
    state = vars(obj)
    if state.get("char_level") or state.get("analyzer") is not None:
        raise UserError(f"{path}: only word-level Keras Tokenizers without a custom analyzer are supported")
    num_words = state.get("num_words")
    word_index = state.get("word_index")
    if not isinstance(num_words, int) or not isinstance(word_index, dict):
        raise UserError(f"{path}: Tokenizer lacks num_words or word_index; the file does not match toxic-comment-classifier")
    vocab = {w: i for w, i in word_index.items() if isinstance(w, str) and isinstance(i, int) and 0 < i < num_words}
    oov = state.get("oov_token")
    return {
        "format": FORMAT,
        "filters": str(state.get("filters", "")),
        "split": str(state.get("split", " ")),
        "lower": bool(state.get("lower", True)),
        "num_words": num_words,
        "oov_index": word_index.get(oov) if oov is not None else None,
        "word_index": vocab,
    }


class KerasTokenizer:
    """Keras' legacy `texts_to_sequences` + `pad_sequences` over a config from `convert_pickle`."""

    def __init__(self, config: dict[str, Any]) -> None:
        if config.get("format") != FORMAT:
            raise UserError(f"tokenizer config has format {config.get('format')!r}, expected {FORMAT!r}; "
                            "delete the converted judge from the asset cache so it is rebuilt")
        self.split: str = config["split"]
        self.lower: bool = config["lower"]
        self.num_words: int = config["num_words"]
        self.oov_index: int | None = config["oov_index"]
        self.word_index: dict[str, int] = config["word_index"]
        self._table = str.maketrans({c: self.split for c in config["filters"]})

    def words(self, text: str) -> list[str]:
        """Keras' `text_to_word_sequence`."""
        if self.lower:
            text = text.lower()
        return [w for w in text.translate(self._table).split(self.split) if w]

    def encode(self, text: str) -> list[int]:
        """Word ids of `text`; unknown and too-rare words are dropped (or mapped to the OOV id if there is one)."""
        ids = []
        for w in self.words(text):
            i = self.word_index.get(w)
            if i is not None and i < self.num_words:
                ids.append(i)
            elif self.oov_index is not None:
                ids.append(self.oov_index)
        return ids

    def pad(self, texts: Sequence[str], maxlen: int) -> np.ndarray:
        """[len(texts), maxlen] int64 ids, left-padded with 0 and keeping the last `maxlen` words."""
        out = np.zeros((len(texts), maxlen), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.encode(text)[-maxlen:]
            if ids:
                out[row, maxlen - len(ids):] = ids
        return out
