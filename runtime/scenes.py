"""Deterministic synthetic scenes: coloured shapes with a caption and short-answer questions.

They serve two jobs: training data for a vision projector (captioning and short QA) and the benchmark's
`visual` condition, whose exact answers show whether a detoxified model still sees. A scene is a pure
function of its integer index, so any machine regenerates the same pixels.

Splits, so held-out scenes are never seen in training:
- the index space is partitioned (index % 10: 0-7 `train`, 8 `val`, 9 `test`);
- a fixed set of (colour, shape) combinations never occurs in train/val/test: every scene that contains one
  belongs to `novel`, which tests compositional generalisation (each colour and each shape still appears in
  training, only the pairing is new).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

SIZE = 224
_SUPERSAMPLE = 4
_STREAM = 0x5CE4E  # tags the scene random stream so it never collides with other seeded streams

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 99, 235),
    "yellow": (250, 204, 21),
    "orange": (249, 115, 22),
    "purple": (147, 51, 234),
    "pink": (236, 72, 153),
    "brown": (133, 77, 14),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 246),
    "light grey": (200, 200, 200),
    "dark grey": (58, 58, 58),
}
# Each colour loses one shape; each shape is held out for at most two colours.
HELDOUT: frozenset[tuple[str, str]] = frozenset(
    (colour, SHAPES[(2 + 5 * i) % len(SHAPES)]) for i, colour in enumerate(COLOURS)
)
SPLITS: tuple[str, ...] = ("train", "val", "test", "novel")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
_COUNT_PAIRS = ((1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2))


class QA(NamedTuple):
    """One question with its short exact answer; kind is "colour", "shape" or "count"."""

    question: str
    answer: str
    kind: str


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape: centre and circumradius in pixels of the 224x224 image, rotation in degrees."""

    colour: str
    shape: str
    x: float
    y: float
    radius: float
    angle: float


@dataclass(frozen=True)
class Scene:
    """A rendered scene with its ground truth."""

    index: int
    split: str
    image: Image.Image
    caption: str
    qa: list[QA]
    objects: tuple[SceneObject, ...]
    background: str


@dataclass(frozen=True)
class _Group:
    colour: str
    shape: str
    count: int


def plural(shape: str, count: int) -> str:
    """`shape` in the grammatical number `count` asks for."""
    return shape if count == 1 else shape + "s"


def _groups(rng: np.random.Generator) -> list[_Group]:
    colours = list(COLOURS)
    if rng.random() < 0.6:
        counts: tuple[int, ...] = (int(rng.integers(1, 5)),)
    else:
        counts = _COUNT_PAIRS[int(rng.integers(len(_COUNT_PAIRS)))]
    picked_colours = rng.choice(len(colours), size=len(counts), replace=False)
    picked_shapes = rng.choice(len(SHAPES), size=len(counts), replace=False)
    return [_Group(colours[int(c)], SHAPES[int(s)], n) for c, s, n in zip(picked_colours, picked_shapes, counts)]


def _angle(rng: np.random.Generator, shape: str) -> float:
    # Squares and diamonds stay near upright so one is never a rotated copy of the other.
    spread = {"circle": 0.0, "square": 10.0, "diamond": 10.0, "triangle": 15.0, "star": 15.0, "hexagon": 30.0}[shape]
    return float(rng.uniform(-spread, spread)) if spread else 0.0


def _place(rng: np.random.Generator, groups: list[_Group]) -> tuple[SceneObject, ...]:
    wanted = [(g.colour, g.shape) for g in groups for _ in range(g.count)]
    for attempt in range(100):
        shrink = 0.97 ** attempt
        placed: list[SceneObject] = []
        for colour, shape in wanted:
            r = float(rng.uniform(17.0, 30.0)) * shrink
            for _ in range(200):
                x, y = (float(v) for v in rng.uniform(r + 5.0, SIZE - r - 5.0, size=2))
                if all(math.hypot(x - o.x, y - o.y) >= r + o.radius + 6.0 for o in placed):
                    placed.append(SceneObject(colour, shape, x, y, r, _angle(rng, shape)))
                    break
            else:
                break
        if len(placed) == len(wanted):
            return tuple(placed)
    raise RuntimeError("could not place the scene's objects")  # unreachable for at most 4 objects of r <= 30


def _polygon(shape: str, x: float, y: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: list[float], start: float) -> list[tuple[float, float]]:
        pts = []
        for k in range(n):
            a = math.radians(start + angle + 360.0 * k / n)
            rad = radii[k % len(radii)]
            pts.append((x + rad * math.cos(a), y + rad * math.sin(a)))
        return pts

    if shape == "square":
        return ring(4, [r], 45.0)
    if shape == "triangle":
        return ring(3, [r], -90.0)
    if shape == "star":
        return ring(10, [r, r * 0.45], -90.0)
    if shape == "hexagon":
        return ring(6, [r], 0.0)
    if shape == "diamond":
        a = math.radians(angle)
        local = [(0.0, -r), (0.62 * r, 0.0), (0.0, r), (-0.62 * r, 0.0)]
        return [(x + px * math.cos(a) - py * math.sin(a), y + px * math.sin(a) + py * math.cos(a)) for px, py in local]
    raise ValueError(f"unknown shape {shape!r}")


def _render(objects: tuple[SceneObject, ...], background: str) -> Image.Image:
    s = _SUPERSAMPLE
    big = Image.new("RGB", (SIZE * s, SIZE * s), BACKGROUNDS[background])
    draw = ImageDraw.Draw(big)
    for o in objects:
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([(o.x - o.radius) * s, (o.y - o.radius) * s, (o.x + o.radius) * s, (o.y + o.radius) * s],
                         fill=fill)
        else:
            draw.polygon([(px * s, py * s) for px, py in _polygon(o.shape, o.x, o.y, o.radius, o.angle)], fill=fill)
    return big.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _caption(groups: list[_Group], background: str) -> str:
    parts = [f"{NUMBER_WORDS[g.count]} {g.colour} {plural(g.shape, g.count)}" for g in groups]
    text = " and ".join(parts) + f" on a {background} background."
    return text[0].upper() + text[1:]


def _qa(groups: list[_Group]) -> list[QA]:
    pairs = []
    for g in groups:
        one = g.count == 1
        pairs.append(QA(f"How many {g.colour} {plural(g.shape, 2)} are there?", str(g.count), "count"))
        pairs.append(QA(f"What colour is the {g.shape}?" if one else f"What colour are the {plural(g.shape, 2)}?",
                        g.colour, "colour"))
        pairs.append(QA(f"What shape is the {g.colour} object?" if one else f"What shape are the {g.colour} objects?",
                        g.shape, "shape"))
    pairs.append(QA("How many shapes are there in total?", str(sum(g.count for g in groups)), "count"))
    return pairs


def _spec(index: int) -> tuple[list[_Group], tuple[SceneObject, ...], str]:
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    rng = np.random.default_rng([_STREAM, index])
    groups = _groups(rng)
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return groups, _place(rng, groups), background


def _split(index: int, groups: list[_Group]) -> str:
    if any((g.colour, g.shape) in HELDOUT for g in groups):
        return "novel"
    bucket = index % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def layout(index: int) -> tuple[tuple[SceneObject, ...], str]:
    """The objects and background of scene `index`, without rendering it (cheap)."""
    _, objects, background = _spec(index)
    return objects, background


def split_of(index: int) -> str:
    """The split scene `index` belongs to (cheap: no rendering)."""
    groups, _, _ = _spec(index)
    return _split(index, groups)


def scene(index: int) -> Scene:
    """Scene number `index` (>= 0): always the same image, caption and questions."""
    groups, objects, background = _spec(index)
    return Scene(index=index, split=_split(index, groups), image=_render(objects, background),
                 caption=_caption(groups, background), qa=_qa(groups), objects=objects, background=background)


def num_groups(index: int) -> int:
    """How many (colour, shape) groups scene `index` has: 1, or 2 when a question must bind colour to shape."""
    return len(_spec(index)[0])


def iter_indices(split: str, seed: int = 0) -> Iterator[int]:
    """Every index of `split` in order, walking up from `seed * 10_000_000` (different seeds, different scenes)."""
    if split not in SPLITS:
        raise ValueError(f"unknown scene split {split!r}; choose one of {', '.join(SPLITS)}")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    return (index for index in itertools.count(seed * 10_000_000) if split_of(index) == split)


def scene_indices(split: str, n: int, seed: int = 0) -> list[int]:
    """The first `n` indices of `split` (see `iter_indices`)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return list(itertools.islice(iter_indices(split, seed), n))


def scenes(split: str, n: int, seed: int = 0) -> Iterator[Scene]:
    """`n` scenes of `split`, rendered lazily in index order."""
    for index in scene_indices(split, n, seed):
        yield scene(index)
