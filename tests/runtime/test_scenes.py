"""Synthetic scenes: deterministic, truthful ground truth, and splits that never leak into training."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from runtime import scenes
from runtime.mmtoxicqa.dataset import png_bytes


def test_same_index_gives_same_scene_and_bytes():
    a, b = scenes.scene(123), scenes.scene(123)
    assert png_bytes(a.image) == png_bytes(b.image)
    assert (a.caption, a.qa, a.objects) == (b.caption, b.qa, b.objects)
    assert png_bytes(scenes.scene(124).image) != png_bytes(a.image)


def test_image_format_and_counts():
    for i in range(40):
        s = scenes.scene(i)
        assert s.image.size == (224, 224) and s.image.mode == "RGB"
        assert 1 <= len(s.objects) <= 4
        assert s.split == scenes.split_of(i) and scenes.layout(i) == (s.objects, s.background)


def test_each_object_is_drawn_in_its_colour():
    for i in range(30):
        s = scenes.scene(i)
        pixels = np.asarray(s.image).astype(int)
        for o in s.objects:
            centre = pixels[int(round(o.y)), int(round(o.x))]
            assert np.abs(centre - np.array(scenes.COLOURS[o.colour])).max() <= 3, (i, o)


def test_objects_do_not_overlap_and_stay_inside():
    for i in range(60):
        objs = scenes.scene(i).objects
        for o in objs:
            assert o.radius <= o.x <= 224 - o.radius and o.radius <= o.y <= 224 - o.radius
        for a, b in itertools.combinations(objs, 2):
            assert np.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius


def test_answers_follow_from_the_objects():
    for i in range(60):
        s = scenes.scene(i)
        for qa in s.qa:
            words = qa.question.rstrip("?").split()
            if qa.question == "How many shapes are there in total?":
                assert qa.answer == str(len(s.objects))
            elif qa.kind == "count":  # How many <colour> <shape>s are there?
                colour, shape = words[2], words[3].removesuffix("s")
                assert qa.answer == str(sum(o.colour == colour and o.shape == shape for o in s.objects))
            elif qa.kind == "colour":  # What colour is the <shape>? / are the <shape>s?
                shape = words[-1].removesuffix("s")
                assert {o.colour for o in s.objects if o.shape == shape} == {qa.answer}
            else:  # What shape is the <colour> object? / are the <colour> objects?
                colour = words[-2]
                assert qa.kind == "shape" and {o.shape for o in s.objects if o.colour == colour} == {qa.answer}
        assert {qa.kind for qa in s.qa} == {"colour", "shape", "count"}


def test_caption_names_every_group():
    s = scenes.scene(0)
    for o in s.objects:
        assert o.colour in s.caption and o.shape in s.caption
    assert s.caption.endswith(f"on a {s.background} background.")


def test_splits_are_disjoint_and_novel_holds_the_heldout_pairs():
    train = set(scenes.scene_indices("train", 150))
    for split in ("val", "test", "novel"):
        other = set(scenes.scene_indices(split, 60))
        assert not train & other
    for i in scenes.scene_indices("novel", 40):
        assert {(o.colour, o.shape) for o in scenes.layout(i)[0]} & scenes.HELDOUT
    train_pairs = {(o.colour, o.shape) for i in train for o in scenes.layout(i)[0]}
    assert not train_pairs & scenes.HELDOUT
    # held-out pairs are new combinations, not new words: every colour and shape is seen in training
    assert {c for c, _ in train_pairs} == set(scenes.COLOURS)
    assert {s for _, s in train_pairs} == set(scenes.SHAPES)
    for i in scenes.scene_indices("test", 40):
        assert i % 10 == 9


def test_scenes_yields_requested_split_and_seed_changes_them():
    got = list(scenes.scenes("test", 5, seed=0))
    assert len(got) == 5 and all(s.split == "test" for s in got)
    assert [s.index for s in got] == scenes.scene_indices("test", 5, seed=0)
    assert not set(scenes.scene_indices("test", 5, seed=1)) & {s.index for s in got}


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown scene split"):
        scenes.scene_indices("training", 3)
    with pytest.raises(ValueError):
        scenes.scene(-1)
