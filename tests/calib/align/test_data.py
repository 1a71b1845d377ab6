"""Alignment data: deterministic by seed, truthful, and held-out scenes never seen in training."""
from __future__ import annotations

import numpy as np
import pytest

from calib.align import data, evaluate
from runtime import scenes
from runtime.errors import UserError


def _pixels(sample: data.Sample) -> bytes:
    return np.asarray(sample.image).tobytes()


def test_same_seed_same_samples_other_seed_other_scenes():
    a, b = data.training_samples(6, 2, seed=3), data.training_samples(6, 2, seed=3)
    assert [(s.source, s.turns, _pixels(s)) for s in a] == [(s.source, s.turns, _pixels(s)) for s in b]
    c = data.scene_samples(6, seed=4)
    assert not {s.source for s in a} & {s.source for s in c}


def _truthful(sample: data.Sample) -> scenes.Scene:
    scene = scenes.scene(int(sample.source.split(":")[1]))
    assert scene.split == "train"
    assert sample.turns[0].kind == "caption" and sample.turns[0].answer == scene.caption
    assert sample.turns[0].question in data.CAPTION_QUESTIONS
    truth = {(qa.question, qa.answer) for qa in scene.qa}
    for t in sample.turns[1:]:
        assert (t.question.removesuffix(data.SHORT_SUFFIX), t.answer) in truth
    return scene


def test_one_question_per_kind_recipe():
    for sample in data.scene_samples(8, seed=0, every_binding=False):
        _truthful(sample)
        assert [t.kind for t in sample.turns] == ["caption", *data.QA_KINDS]


def test_two_group_scenes_get_every_binding_question_and_their_share_is_set():
    samples = data.scene_samples(10, seed=0, multi_fraction=0.6, every_binding=True)
    multi = [s for s in samples if scenes.num_groups(int(s.source.split(":")[1])) == 2]
    assert len(multi) == 6
    for sample in samples:
        scene = _truthful(sample)
        kinds = [t.kind for t in sample.turns]
        want = 2 if sample in multi else 1
        assert kinds.count("colour") == kinds.count("shape") == want and kinds.count("count") == 1
        asked = {t.question.removesuffix(data.SHORT_SUFFIX) for t in sample.turns}
        if want == 2:
            assert {qa.question for qa in scene.qa if qa.kind in ("colour", "shape")} <= asked
    natural = data.scene_samples(30, seed=0)
    assert [s.source for s in natural] == [f"scene:{i}" for i in scenes.scene_indices("train", 30)]
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        data.scene_samples(4, seed=0, multi_fraction=1.5)


def test_photo_views_are_the_photo_then_crops_and_flips():
    samples = data.photo_samples(3, seed=0)
    assert len(samples) == 3 * len(data.PHOTOS)
    astronaut = [s for s in samples if s.source.startswith("photo:astronaut:")]
    assert _pixels(astronaut[0]) == np.asarray(data.photo_image("astronaut")).tobytes()
    assert len({_pixels(s) for s in astronaut}) == 3
    assert all(s.image.mode == "RGB" for s in samples)
    assert not {p.name for p in data.HELDOUT_PHOTOS} & {s.source.split(":")[1] for s in samples}


def test_evaluation_questions_come_from_held_out_scenes_only():
    train = {s.source for s in data.scene_samples(50, seed=0)}
    questions = evaluate.heldout_questions(10, seed=0)
    assert len(questions) == 30 and [q.kind for q in questions[:3]] == list(data.QA_KINDS)
    assert all(scenes.split_of(int(q.source.split(":")[1])) == "test" for q in questions)
    assert not {q.source for q in questions} & train
    assert all(q.question.endswith(data.SHORT_SUFFIX) for q in questions)
    with pytest.raises(UserError, match="held-out"):
        evaluate.heldout_questions(5, seed=0, split="train")


def test_bad_inputs_are_refused_with_clear_errors():
    with pytest.raises(UserError, match="no photo 'nope'"):
        data.photo_image("nope")
    with pytest.raises(UserError, match=">= 0"):
        data.scene_samples(-1, seed=0)
    with pytest.raises(UserError, match=">= 1"):
        evaluate.heldout_questions(0, seed=0)


@pytest.mark.parametrize("response,answer,ok", [
    ("Red.", "red", True), ("The circle", "circle", True), ("three", "3", True), ("3 circles", "3", False),
    ("It is red", "red", False), ("blue", "red", False)])
def test_exact_match_on_the_normalised_answer(response, answer, ok):
    assert evaluate.exact_match(response, answer) is ok


@pytest.mark.parametrize("flag,value,message", [("--tokens-per-patch", "0", "tokens-per-patch must be >= 1"),
                                                ("--multi-group-fraction", "1.5", r"\[0, 1\]")])
def test_align_cli_refuses_bad_options_and_writes_nothing(tmp_path, capsys, flag, value, message):
    import re

    from calib.align.__main__ import main

    out = tmp_path / "projector"
    assert main(["--out", str(out), flag, value, "--scenes", "2", "--quiet"]) == 2
    assert re.search(message, capsys.readouterr().err) and not out.exists()
