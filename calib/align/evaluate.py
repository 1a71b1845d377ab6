"""Held-out visual accuracy (greedy, exact match on the normalised answer) and photo descriptions.

Questions come from scenes of the held-out `test` split, one of each kind (colour, shape, count) per scene,
asked in the MM-TOXIC-QA `visual` format (the question and " Answer with a single word.").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from calib.align.data import CAPTION_QUESTION, HELDOUT_PHOTOS, PHOTOS, QA_KINDS, SHORT_SUFFIX, photo_image
from calib.models.base import MultimodalModel
from runtime import scenes
from runtime.errors import UserError
from runtime.protocol import GenerationConfig, GenerationRequest

_STREAM = 0xE7A1
_ARTICLES = {"a", "an", "the"}
_NUMBERS = {w: str(i) for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                              "nine", "ten"))}
ANSWER_CONFIG = GenerationConfig(max_new_tokens=8)
DESCRIPTION_CONFIG = GenerationConfig(max_new_tokens=40)


@dataclass(frozen=True)
class Question:
    """A held-out question with its exact answer."""

    source: str
    image: Image.Image
    question: str
    answer: str
    kind: str


def normalise(text: str) -> str:
    """Lowercase, punctuation to spaces, articles dropped, number words zero-ten to digits, single spaces."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in _ARTICLES)


def exact_match(response: str, answer: str) -> bool:
    """True when the normalised response equals the normalised answer."""
    return normalise(response) == normalise(answer)


def heldout_questions(n_scenes: int, seed: int, split: str = "test") -> list[Question]:
    """One question of each kind for each of `n_scenes` scenes of a held-out split (`test` or `novel`)."""
    if split == "train":
        raise UserError("evaluation needs held-out scenes: use the test or novel split, not train")
    if n_scenes < 1:
        raise UserError(f"the number of evaluation scenes must be >= 1, got {n_scenes}")
    rng = np.random.default_rng([_STREAM, seed])
    out = []
    for s in scenes.scenes(split, n_scenes, seed=seed):
        for kind in QA_KINDS:
            options = [qa for qa in s.qa if qa.kind == kind]
            qa = options[int(rng.integers(len(options)))]
            out.append(Question(f"scene:{s.index}", s.image, qa.question + SHORT_SUFFIX, qa.answer, kind))
    return out


def _generate(model: MultimodalModel, requests: Sequence[GenerationRequest], config: GenerationConfig,
              desc: str, progress: bool, batch_size: int = 8) -> list[str]:
    out: list[str] = []
    for start in tqdm(range(0, len(requests), batch_size), desc=desc, unit="batch", disable=not progress):
        out += [r.text for r in model.generate(requests[start:start + batch_size], config, batch_size=batch_size)]
    return out


def visual_accuracy(model: MultimodalModel, questions: Sequence[Question], desc: str = "evaluate",
                    progress: bool = True) -> dict[str, Any]:
    """Accuracy per kind ({kind: {correct, n, accuracy}}) and every response, from greedy generation."""
    responses = _generate(model, [GenerationRequest(q.question, q.image) for q in questions], ANSWER_CONFIG,
                          desc, progress)
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted({q.kind for q in questions}):
        hits = [exact_match(r, q.answer) for q, r in zip(questions, responses) if q.kind == kind]
        by_kind[kind] = {"correct": int(sum(hits)), "n": len(hits), "accuracy": sum(hits) / len(hits)}
    rows = [{"source": q.source, "kind": q.kind, "question": q.question, "answer": q.answer, "response": r,
             "correct": exact_match(r, q.answer)} for q, r in zip(questions, responses)]
    return {"by_kind": by_kind, "responses": rows}


def describe_photos(model: MultimodalModel, progress: bool = True) -> list[dict[str, Any]]:
    """The model's one-line description of every photo (trained-on and held-out), with the reference caption."""
    photos = [(p, False) for p in PHOTOS] + [(p, True) for p in HELDOUT_PHOTOS]
    requests = [GenerationRequest(CAPTION_QUESTION, photo_image(p.name)) for p, _ in photos]
    texts = _generate(model, requests, DESCRIPTION_CONFIG, "describe photos", progress)
    return [{"photo": p.name, "trained_on": not heldout, "reference": p.caption, "description": t.splitlines()[0]
             if t else ""} for (p, heldout), t in zip(photos, texts)]
