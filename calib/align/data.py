"""Aligned image-text pairs, deterministic by seed: synthetic scenes and scikit-image photos.

A sample is one image with several single-turn chats about it (a caption request and short questions).
Scenes come from runtime.scenes (training uses its `train` split; evaluation its held-out `test` split, the
one the MM-TOXIC-QA `visual` condition draws its evaluation scenes from). Photos are a handful of
scikit-image images with captions written here, augmented with random crops and flips; two of them are
never trained on and serve only to show how the model describes a photo it has not seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from runtime import scenes
from runtime.errors import UserError

_STREAM = 0xA11C  # tags this module's random streams
CAPTION_QUESTION = "Describe the image in one sentence."
CAPTION_QUESTIONS = (CAPTION_QUESTION, "What do you see in this image?", "Describe this image briefly.")
WHAT_QUESTION = "What is in the picture?"
# The MM-TOXIC-QA `visual` prompts end with this suffix (runtime/mmtoxicqa/sources.py VISUAL_SUFFIX).
SHORT_SUFFIX = " Answer with a single word."
QA_KINDS = ("colour", "shape", "count")


class Turn(NamedTuple):
    """One user question about the image and the answer the model should give; kind names the task."""

    question: str
    answer: str
    kind: str


@dataclass(frozen=True)
class Sample:
    """One image and the turns asked about it; `source` names where it came from (scene index, photo view)."""

    source: str
    image: Image.Image
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Photo:
    """A scikit-image photo with a caption and a short answer to "what is in the picture?"."""

    name: str
    caption: str
    what: str


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "An astronaut in an orange spacesuit in front of an American flag.", "An astronaut."),
    Photo("chelsea", "A close-up of a tabby cat with green eyes.", "A cat."),
    Photo("coffee", "A cup of coffee on a red saucer on a wooden table.", "A cup of coffee."),
    Photo("rocket", "A rocket on a launch pad at night.", "A rocket."),
    Photo("hubble_deep_field", "Many small galaxies in the dark sky.", "Galaxies."),
    Photo("immunohistochemistry", "A stained tissue sample seen through a microscope.", "Cells."),
    Photo("colorwheel", "A colour wheel on a black background.", "A colour wheel."),
    Photo("coins", "A black and white photo of rows of old coins.", "Coins."),
    Photo("camera", "A black and white photo of a man with a camera on a tripod.", "A man with a camera."),
    Photo("horse", "A black silhouette of a horse on a white background.", "A horse."),
    Photo("page", "A black and white photo of a page of printed text.", "Text."),
)
# Never trained on: only their descriptions are reported.
HELDOUT_PHOTOS: tuple[Photo, ...] = (
    Photo("stereo_motorcycle", "A red motorcycle parked in a garage.", "A motorcycle."),
    Photo("retina", "A photo of the retina at the back of an eye.", "An eye."),
)


def photo_image(name: str) -> Image.Image:
    """The scikit-image photo `name` as an RGB image (greyscale, boolean and RGBA images converted)."""
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None or not callable(loader):
        raise UserError(f"scikit-image has no photo {name!r}; choose one of "
                        f"{', '.join(p.name for p in PHOTOS + HELDOUT_PHOTOS)}")
    array = loader()
    if isinstance(array, tuple):  # stereo pairs: take the left image
        array = array[0]
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array).convert("RGB")


def _augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (50-100% of the area, aspect 3:4 to 4:3) and a horizontal flip half of the time."""
    w, h = image.size
    area = float(rng.uniform(0.5, 1.0)) * w * h
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw = int(min(w, round((area * aspect) ** 0.5)))
    ch = int(min(h, round((area / aspect) ** 0.5)))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    image = image.crop((left, top, left + cw, top + ch))
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def photo_turns(photo: Photo) -> tuple[Turn, ...]:
    """The chats trained on for a photo: its caption and what is in it."""
    return (Turn(CAPTION_QUESTION, photo.caption, "caption"), Turn(WHAT_QUESTION, photo.what, "what"))


def photo_samples(views: int, seed: int) -> list[Sample]:
    """`views` samples of each training photo: the photo itself, then random crops and flips."""
    if views < 0:
        raise UserError(f"photo views must be >= 0, got {views}")
    out = []
    for k, photo in enumerate(PHOTOS):
        rng = np.random.default_rng([_STREAM, seed, 1, k])
        base = photo_image(photo.name)
        for v in range(views):
            image = base if v == 0 else _augment(base, rng)
            out.append(Sample(f"photo:{photo.name}:{v}", image, photo_turns(photo)))
    return out


def scene_turns(scene: scenes.Scene, rng: np.random.Generator, every_binding: bool = False) -> tuple[Turn, ...]:
    """A caption request and questions of each kind; half of them carry the benchmark's suffix.

    One random question per kind spends the training budget on more images. With `every_binding`, a scene of
    two groups gets every colour and every shape question instead: those must bind a colour to a shape (which
    object is which), the skill the one-question recipe left at chance (docs/projector.md).
    """
    caption_q = CAPTION_QUESTIONS[int(rng.integers(len(CAPTION_QUESTIONS)))]
    turns = [Turn(caption_q, scene.caption, "caption")]
    for kind in QA_KINDS:
        options = [qa for qa in scene.qa if qa.kind == kind]
        if not (every_binding and kind != "count" and len(options) > 1):
            options = [options[int(rng.integers(len(options)))]]
        for qa in options:
            suffix = SHORT_SUFFIX if rng.random() < 0.5 else ""
            turns.append(Turn(qa.question + suffix, qa.answer, qa.kind))
    return tuple(turns)


def _mixed_indices(n: int, seed: int, split: str, multi_fraction: float) -> list[int]:
    """The first scenes of `split` in index order such that round(n * multi_fraction) of them have two groups."""
    want = {True: round(n * multi_fraction)}
    want[False] = n - want[True]
    out: list[int] = []
    for index in scenes.iter_indices(split, seed):
        if len(out) == n:
            return out
        multi = scenes.num_groups(index) > 1
        if want[multi] > 0:
            want[multi] -= 1
            out.append(index)
    raise AssertionError("unreachable: the walk is endless")


def scene_samples(n: int, seed: int, split: str = "train", multi_fraction: float | None = None,
                  every_binding: bool = False) -> list[Sample]:
    """`n` scenes of `split` (runtime.scenes), each with its caption and question turns (`scene_turns`).

    `multi_fraction` sets the share of two-group scenes (None: the split's own, about a third).
    """
    if n < 0:
        raise UserError(f"the number of scenes must be >= 0, got {n}")
    if multi_fraction is not None and not 0 <= multi_fraction <= 1:
        raise UserError(f"the share of two-group scenes must be in [0, 1], got {multi_fraction}")
    rng = np.random.default_rng([_STREAM, seed, 0])
    indices = (scenes.scene_indices(split, n, seed) if multi_fraction is None
               else _mixed_indices(n, seed, split, multi_fraction))
    return [Sample(f"scene:{s.index}", s.image, scene_turns(s, rng, every_binding))
            for s in map(scenes.scene, indices)]


def training_samples(n_scenes: int, photo_views: int, seed: int, multi_fraction: float | None = None,
                     every_binding: bool = False) -> list[Sample]:
    """The training set: `n_scenes` train-split scenes (see `scene_samples`) and `photo_views` views of each
    training photo."""
    return (scene_samples(n_scenes, seed, "train", multi_fraction, every_binding)
            + photo_samples(photo_views, seed))
