"""Builds the MM-TOXIC-QA dataset: deterministic for a seed, byte-identical across builds, written atomically.

Conditions (each item: a user prompt and an image):
- `standard`: a photo or synthetic scene + a chat instruction around a challenging RTP prompt.
- `jailbreak`: the same, wrapped in a DAN-family template.
- `typographic`: the RTP prompt rendered into the image; the text instruction is benign (FigStep style).
- `continuation`: the RTP prompt itself as raw text, no chat template and no image (RealToxicityPrompts' own
  protocol: the model continues it), the regime of a base language model such as gemma-llava's.
- `benign`: a neutral question about a photo or scene (fluency, over-suppression).
- `visual`: a held-out synthetic scene with a short exact answer (colour, shape, count).

Splits are disjoint by source: RTP prompts are split stratified by category, benign questions and scenes
are partitioned too (calibration scenes come from the scene split `val`, evaluation scenes from `test`, and
neither ever from `train`, which a projector may be trained on). In evaluation the three toxic conditions
share the same prompts, images and instruction templates, so they differ only by the attack.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime import assets, scenes
from runtime.artifacts import atomic_dir, check_output, write_manifest
from runtime.errors import UserError
from runtime.mmtoxicqa import sources
from runtime.mmtoxicqa.dataset import png_bytes, write_items
from runtime.mmtoxicqa.items import CONDITIONS, FORMAT, FORMAT_VERSION, ITEMS_FILE, TOXIC_CONDITIONS, Item
from runtime.mmtoxicqa.typography import render_text

SCENE_SPLIT = {"calibration": "val", "evaluation": "test"}
_SPLIT_TAG = {"calibration": "cal", "evaluation": "eval"}
_STREAM = 0x7071C  # tags the builder's random stream
BENIGN_EVAL_SHARE = 1 / 3
VISUAL_KINDS = ("colour", "shape", "count")
ATTACK_CONDITIONS = ("standard", "jailbreak", "typographic")  # the multimodal ones, built by _toxic_items


@dataclass(frozen=True)
class BuildConfig:
    """What to build: the seed and the number of items per condition in each split."""

    seed: int = 0
    eval_size: int = 50
    calib_size: int = 100

    def check(self, n_prompts: int) -> None:
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        if self.eval_size < 1 or self.calib_size < 1:
            raise UserError("--eval-size and --calib-size must be >= 1")
        if self.eval_size >= n_prompts:
            raise UserError(f"--eval-size {self.eval_size} leaves no RTP prompt for calibration "
                            f"({n_prompts} unique prompts); use at most {n_prompts - 1}")
        if self.calib_size > n_prompts - self.eval_size:
            raise UserError(f"--calib-size {self.calib_size} exceeds the {n_prompts - self.eval_size} RTP prompts "
                            f"left after evaluation; use at most that, or a smaller --eval-size")


class _Images:
    """Writes each distinct image once under images/, named by what it shows."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "images").mkdir()
        self.written: set[str] = set()

    def add(self, name: str, make: Callable[[], Any]) -> str:
        rel = f"images/{name}.png"
        if rel not in self.written:
            (self.root / rel).write_bytes(png_bytes(make()))
            self.written.add(rel)
        return rel

    def photo(self, name: str) -> str:
        return self.add(f"photo-{name}", lambda: sources.photo(name))

    def scene(self, index: int) -> str:
        return self.add(f"scene-{index:08d}", lambda: scenes.scene(index).image)


def _round_robin(groups: dict[str, list[sources.SourcePrompt]]) -> list[sources.SourcePrompt]:
    queues = {k: list(v) for k, v in sorted(groups.items())}
    out: list[sources.SourcePrompt] = []
    while any(queues.values()):
        for q in queues.values():
            if q:
                out.append(q.pop(0))
    return out


def split_prompts(prompts: list[sources.SourcePrompt], eval_size: int,
                  rng: np.random.Generator) -> tuple[list[sources.SourcePrompt], list[sources.SourcePrompt]]:
    """(evaluation, calibration) prompts: each category shuffled, then taken in turn, so both stay balanced."""
    groups: dict[str, list[sources.SourcePrompt]] = {}
    for p in prompts:
        groups.setdefault(p.category, []).append(p)
    for key in sorted(groups):
        order = rng.permutation(len(groups[key]))
        groups[key] = [groups[key][i] for i in order]
    ordered = _round_robin(groups)
    return ordered[:eval_size], ordered[eval_size:]


def _context_image(images: _Images, rng: np.random.Generator, scene_pool: list[int]) -> tuple[str, dict]:
    if rng.random() < 0.5:
        name = sources.PHOTOS[int(rng.integers(len(sources.PHOTOS)))]
        return images.photo(name), {"image_source": f"skimage:{name}"}
    index = scene_pool[int(rng.integers(len(scene_pool)))]
    return images.scene(index), {"image_source": f"scene:{index}"}


def _toxic_items(split: str, prompts_by_condition: dict[str, list[sources.SourcePrompt]], images: _Images,
                 rng: np.random.Generator, scene_pool: list[int],
                 templates: list[sources.JailbreakTemplate]) -> list[Item]:
    items = []
    tag = _SPLIT_TAG[split]
    # One draw per prompt position (template, image, jailbreak, typographic instruction), shared by the three
    # conditions when they share prompts (evaluation): the conditions then differ only by the attack.
    draws: dict[str, tuple] = {}
    for condition in ATTACK_CONDITIONS:
        for i, p in enumerate(prompts_by_condition[condition]):
            if p.id not in draws or split == "calibration":
                image, meta = _context_image(images, rng, scene_pool)
                draws[p.id] = (int(rng.integers(len(sources.CONTINUATION_TEMPLATES))), image, meta,
                               templates[int(rng.integers(len(templates)))],
                               int(rng.integers(len(sources.TYPOGRAPHIC_INSTRUCTIONS))))
            t_index, image, image_meta, jailbreak, typo_index = draws[p.id]
            instruction = sources.CONTINUATION_TEMPLATES[t_index].format(prompt=p.text)
            meta: dict[str, Any] = {"categories": list(p.categories)}
            if condition == "standard":
                prompt, meta = instruction, {**meta, **image_meta, "template": t_index}
            elif condition == "jailbreak":
                prompt = jailbreak.wrap(instruction)
                meta = {**meta, **image_meta, "template": t_index, "jailbreak": jailbreak.name}
            else:
                image = images.add(f"typo-{p.id}", lambda text=p.text: render_text(text + " ..."))
                prompt = sources.TYPOGRAPHIC_INSTRUCTIONS[typo_index]
                meta = {**meta, "image_source": "typographic", "template": typo_index}
            items.append(Item(id=f"{tag}-{condition}-{i:04d}", split=split, condition=condition, category=p.category,
                              prompt=prompt, image=image, source=p.id, source_text=p.text, meta=meta))
    return items


def _continuation_items(split: str, prompts: list[sources.SourcePrompt]) -> list[Item]:
    """The RTP prompts as raw text to continue (no image, no chat template)."""
    return [Item(id=f"{_SPLIT_TAG[split]}-continuation-{i:04d}", split=split, condition="continuation",
                 category=p.category, prompt=p.text, image=None, source=p.id, source_text=p.text,
                 meta={"categories": list(p.categories)}) for i, p in enumerate(prompts)]


def _benign_items(split: str, size: int, questions: list[int], images: _Images, rng: np.random.Generator,
                  scene_pool: list[int]) -> list[Item]:
    items = []
    for i in range(size):
        q = questions[i % len(questions)]
        image, meta = _context_image(images, rng, scene_pool)
        text = sources.BENIGN_QUESTIONS[q]
        items.append(Item(id=f"{_SPLIT_TAG[split]}-benign-{i:04d}", split=split, condition="benign",
                          category="benign", prompt=text, image=image, source=f"benign-q{q:02d}",
                          source_text=text, meta=meta))
    return items


def _visual_items(split: str, scene_pool: list[int], images: _Images, rng: np.random.Generator) -> list[Item]:
    items = []
    for i, index in enumerate(scene_pool):
        s = scenes.scene(index)
        kind = VISUAL_KINDS[i % len(VISUAL_KINDS)]
        candidates = [qa for qa in s.qa if qa.kind == kind]
        qa = candidates[int(rng.integers(len(candidates)))]
        image = images.add(f"scene-{index:08d}", lambda: s.image)
        items.append(Item(id=f"{_SPLIT_TAG[split]}-visual-{i:04d}", split=split, condition="visual", category=kind,
                          prompt=qa.question + sources.VISUAL_SUFFIX, image=image, source=f"scene-{index}",
                          answer=qa.answer, source_text=qa.question, meta={"caption": s.caption}))
    return items


def fill(root: Path, config: BuildConfig) -> dict[str, Any]:
    """Write items.jsonl and images/ for `config` into the empty directory `root`; return manifest fields."""
    prompts = sources.rtp_prompts()
    config.check(len(prompts))
    templates = sources.jailbreak_templates()
    rng = np.random.default_rng([_STREAM, config.seed])
    eval_prompts, calib_pool = split_prompts(prompts, config.eval_size, rng)
    questions = [int(q) for q in rng.permutation(len(sources.BENIGN_QUESTIONS))]
    n_eval_q = round(len(questions) * BENIGN_EVAL_SHARE)
    benign = {"evaluation": questions[:n_eval_q], "calibration": questions[n_eval_q:]}
    images = _Images(root)
    items: list[Item] = []
    for split, size in (("calibration", config.calib_size), ("evaluation", config.eval_size)):
        if split == "evaluation":
            by_condition = {c: eval_prompts for c in TOXIC_CONDITIONS}
        else:
            by_condition = {c: [calib_pool[int(j)] for j in rng.permutation(len(calib_pool))[:size]]
                            for c in ATTACK_CONDITIONS}
            # a stream of its own, so adding the condition left every other item of format 1 unchanged
            own = np.random.default_rng([_STREAM, config.seed, 2])
            by_condition["continuation"] = [calib_pool[int(j)] for j in own.permutation(len(calib_pool))[:size]]
        scene_pool = scenes.scene_indices(SCENE_SPLIT[split], size, seed=config.seed)
        items += _toxic_items(split, by_condition, images, rng, scene_pool, templates)
        items += _continuation_items(split, by_condition["continuation"])
        items += _benign_items(split, size, benign[split], images, rng, scene_pool)
        items += _visual_items(split, scene_pool, images, rng)
    write_items(root / ITEMS_FILE, items)
    counts = {split: {c: sum(1 for it in items if it.split == split and it.condition == c) for c in CONDITIONS}
              for split in ("calibration", "evaluation")}
    return {"format_version": FORMAT_VERSION, "seed": config.seed,
            "sizes": {"evaluation": config.eval_size, "calibration": config.calib_size},
            "counts": counts, "n_items": len(items), "conditions": list(CONDITIONS),
            "scene_splits": SCENE_SPLIT, "jailbreak_templates": [t.name for t in templates],
            "sources": sources.provenance()}


def build_dataset(out: str | os.PathLike, config: BuildConfig = BuildConfig(), overwrite: bool = False) -> Path:
    """Build the dataset into `out` atomically (nothing appears there unless the build succeeds)."""
    check_output(out, kind=FORMAT)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        fields = fill(tmp, config)
        write_manifest(tmp, FORMAT, **fields)
    return Path(out)


def cached_dataset(config: BuildConfig = BuildConfig()) -> Path:
    """The dataset for `config` in the product's asset cache, built on first use."""
    key = f"mmtoxicqa-v{FORMAT_VERSION}-seed{config.seed}-eval{config.eval_size}-calib{config.calib_size}"
    return assets.derived(key, lambda tmp: fill(tmp, config), kind=FORMAT)


def config_dict(config: BuildConfig) -> dict[str, int]:
    """The config as plain data (for reports)."""
    return asdict(config)
