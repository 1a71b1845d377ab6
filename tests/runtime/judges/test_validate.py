"""AUROC (Mann-Whitney with ties) and validation against reference labels."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.judges.validate import agreement, auroc, read_reference


def test_auroc_by_hand_with_ties() -> None:
    # positives 0.8, 0.5, 0.5; negatives 0.5, 0.2. Pairs (pos, neg): (0.8,0.5)=1 (0.8,0.2)=1 (0.5,0.5)=1/2
    # (0.5,0.2)=1 (0.5,0.5)=1/2 (0.5,0.2)=1 -> 5 / 6
    assert auroc([0.8, 0.5, 0.5, 0.5, 0.2], [1, 1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert auroc([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0
    assert auroc([0.9, 0.2, 0.1], [0, 0, 1]) == 0.0
    assert auroc([0.3, 0.3, 0.3, 0.3], [0, 1, 0, 1]) == 0.5  # all tied: chance


def test_auroc_matches_pairwise_count() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 300) / 5.0  # many ties
    labels = rng.random(300) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auroc(scores, labels) == pytest.approx(pairwise, abs=1e-12)


def test_auroc_rejects_one_class_and_nan() -> None:
    with pytest.raises(UserError, match="both classes; got 0 positive and 2 negative"):
        auroc([0.1, 0.2], [0, 0])
    with pytest.raises(UserError, match="NaN"):
        auroc([np.nan, 0.2], [1, 0])


def _rtp_file(path: Path, rows: list[tuple[str, Any, str, Any]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": {"text": p, "toxicity": pt}, "continuation": {"text": c, "toxicity": ct}})
                            + "\n" for p, pt, c, ct in rows) + "\n")
    return path


class _LengthJudge:
    """Scores a text by its length: enough to check the plumbing."""

    name = "length"
    threshold = 0.5

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([min(len(t) / 10.0, 1.0) for t in texts])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def test_read_reference_and_agreement(tmp_path: Path) -> None:
    f = _rtp_file(tmp_path / "rtp.jsonl", [("long toxic text", 0.9, "short", 0.1), ("tiny", 0.2, "x", None),
                                           ("mid", 0.4, "long toxic", 0.7)])
    ref = read_reference([f])
    assert ref["prompt"]["texts"] == ["long toxic text", "tiny", "mid"] and ref["prompt"]["unscored"] == 0
    assert ref["continuation"]["texts"] == ["short", "long toxic"] and ref["continuation"]["unscored"] == 1
    m = agreement(_LengthJudge(), ref["prompt"]["texts"], ref["prompt"]["reference"])
    assert m["auroc"] == 1.0 and m["n"] == 3 and m["positives"] == 1
    assert m["harmful_rate"] == pytest.approx(1 / 3) and m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["texts_per_s"] > 0


def test_bad_reference_rows_name_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": {"text": "a", "toxicity": 0.1}, "continuation": {"text": "b", "toxicity": 2}}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: continuation.toxicity is 2"):
        read_reference([f])
    f.write_text(json.dumps({"prompt": {"text": "a"}, "continuation": {"text": "b"}}) + "\n")
    with pytest.raises(UserError, match="no prompt .* carries a Perspective toxicity score"):
        read_reference([f])
