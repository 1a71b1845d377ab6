"""Can smol-llava's frozen language model bind a colour to a shape at all? A forced choice, image vs text.

    python benchmarks/binding_ceiling.py [--scenes 200] [--forms image caption is-sentences patch-words]

For every two-group scene among the first `--scenes` held-out test scenes (e.g. "one blue square and one
yellow circle") each binding question ("What colour is the circle?", "What shape is the yellow object?") is
asked with the scene given one of several ways, the assistant's answer is started for it ("The circle is",
"The yellow object is a") and the next-token log-probabilities of the right value and of the other group's
value are compared. Chance is 50%. Forms:

- none: the question alone (the control: the language model's own preference between the two words);
- image: the scene's image through the shipped projector (what the trained model sees);
- caption: the scene's caption as text ("One blue square and one yellow circle on a white background.");
- is-sentences: one explicit sentence per group ("The square is blue. The circle is yellow.");
- patch-words: the words a perfect per-patch projector could at best put in each 7 x 7 patch under an object
  ("blue square, yellow circle, blue square, ..."), in raster order.

If the language model cannot bind from explicit text, no projector trained with the LM frozen can be expected to
teach it to (docs/projector.md). About 1.3 minutes per form on 2 cores.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

FORMS = ("none", "image", "caption", "is-sentences", "patch-words")


@dataclass(frozen=True)
class Item:
    """One binding question of a two-group scene: the forced answer prefix and (right, other) next words."""

    scene: object
    groups: tuple[tuple[str, str], ...]
    kind: str
    question: str
    prefix: str
    right: str
    other: str


def binding_items(n_scenes: int) -> list[Item]:
    """The colour and shape questions of the two-group scenes among the first `n_scenes` test scenes."""
    from runtime import scenes

    items = []
    for s in scenes.scenes("test", n_scenes):
        counts: dict[tuple[str, str], int] = {}
        for o in s.objects:
            counts[(o.colour, o.shape)] = counts.get((o.colour, o.shape), 0) + 1
        if len(counts) != 2:
            continue
        (c1, s1), (c2, s2) = counts
        for qa in s.qa:
            colour_q = re.fullmatch(r"What colou?r (is|are) the (\w+)\?", qa.question)
            shape_q = re.fullmatch(r"What shape (is|are) the (\w+) objects?\?", qa.question)
            if colour_q:
                verb, noun = colour_q.groups()
                items.append(Item(s, tuple(counts), "colour", qa.question, f"The {noun} {verb}", qa.answer,
                                  c2 if qa.answer == c1 else c1))
            elif shape_q:
                verb, colour = shape_q.groups()
                prefix = f"The {colour} object is a" if verb == "is" else f"The {colour} objects are"
                other_shape = s2 if colour == c1 else s1
                items.append(Item(s, tuple(counts), "shape", qa.question, prefix, qa.answer,
                                  scenes.plural(other_shape, 1 if verb == "is" else 2)))
    return items


def _patch_words(scene: object) -> str:
    from calib.models import efficientnet
    from runtime import scenes

    cell = scenes.SIZE / efficientnet.GRID
    words = []
    for row in range(efficientnet.GRID):
        for col in range(efficientnet.GRID):
            x, y = (col + 0.5) * cell, (row + 0.5) * cell
            hit = [o for o in scene.objects if (o.x - x) ** 2 + (o.y - y) ** 2 <= (0.9 * o.radius) ** 2]
            if hit:
                words.append(f"{hit[0].colour} {hit[0].shape}")
    return ", ".join(words)


TEXT: dict[str, Callable[[Item], str]] = {
    "none": lambda it: "",
    "caption": lambda it: it.scene.caption,
    "is-sentences": lambda it: " ".join(f"The {shape} is {colour}." for colour, shape in it.groups),
    "patch-words": lambda it: _patch_words(it.scene),
}


@torch.no_grad()
def forced_choice(model: object, items: Sequence[Item], form: str,
                  question_first: bool = False) -> dict[str, tuple[int, int]]:
    """{kind: (right, n)}: how often the right value's next-token log-probability beats the other's; with
    `question_first` a text scene follows the question instead of preceding it."""
    from calib.align.data import SHORT_SUFFIX

    lm = model.module.language_model

    def first(word: str) -> int:  # every colour and shape word starts with a token of its own
        return model.tokenizer(" " + word, add_special_tokens=False).input_ids[0]

    tally: dict[str, list[int]] = {}
    for it in items:
        question = it.question + SHORT_SUFFIX
        if form == "image":
            ids = model.tokenize(model.chat_prompt(question, True) + it.prefix)
            embeds = model.inputs_embeds(ids, [it.scene.image])[None]
        else:
            scene = TEXT[form](it)
            text = (f"{question}\n{scene}" if question_first else f"{scene}\n{question}") if scene else question
            ids = model.tokenize(model.chat_prompt(text, False) + it.prefix)
            embeds = model.embed_tokens(torch.tensor([ids]))
        logp = lm(inputs_embeds=embeds).logits[0, -1].float()
        counts = tally.setdefault(it.kind, [0, 0])
        counts[0] += int(logp[first(it.right)] > logp[first(it.other)])
        counts[1] += 1
    return {k: (v[0], v[1]) for k, v in tally.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=int, default=200, help="test scenes to draw the two-group ones from")
    p.add_argument("--forms", nargs="+", choices=FORMS, default=["none", "image", "caption", "is-sentences"])
    p.add_argument("--question-first", action="store_true", help="text scenes after the question, not before")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if min(args.scenes, args.threads) < 1:
        p.error("--scenes and --threads must be >= 1")
    from calib.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model("smol-llava")
    items = binding_items(args.scenes)
    print(f"{sum(it.kind == 'colour' for it in items)} colour and {sum(it.kind == 'shape' for it in items)} shape "
          f"binding questions from the two-group scenes of {args.scenes} test scenes; chance 50%")
    print("| scene given as | colour: right value preferred | shape: right value preferred |\n|---|---|---|")
    for form in args.forms:
        t = forced_choice(model, items, form, args.question_first)
        cells = [f"{t[k][0] / t[k][1]:.0%} ({t[k][0]}/{t[k][1]})" if k in t else "-" for k in ("colour", "shape")]
        print(f"| {form} | {cells[0]} | {cells[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
