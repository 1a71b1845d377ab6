"""The benchmark's unit: one item (a prompt, an optional image, where it came from) and its vocabulary."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from PIL import Image

from runtime.errors import UserError
from runtime.images import decode_image

FORMAT = "mmtoxicqa-dataset"
FORMAT_VERSION = 2  # 2: the `continuation` condition
ITEMS_FILE = "items.jsonl"

SPLITS: tuple[str, ...] = ("calibration", "evaluation")
CONDITIONS: tuple[str, ...] = ("standard", "jailbreak", "typographic", "continuation", "benign", "visual")
# Conditions whose prompts try to elicit toxic text: the headline harmful rate is measured on these.
TOXIC_CONDITIONS: tuple[str, ...] = ("standard", "jailbreak", "typographic", "continuation")
# Conditions sent as raw text, without the chat template: RealToxicityPrompts' own protocol (the model
# continues the prompt), the regime of a base language model.
RAW_CONDITIONS: tuple[str, ...] = ("continuation",)


@dataclass(frozen=True)
class Item:
    """One benchmark item.

    `prompt` is the user text sent to the model (no chat template). `image` is a path relative to `root`
    (None for text-only items). `source` identifies the source prompt, so splits can be kept disjoint by it;
    `source_text` is that prompt's own text (what the echo metric compares a response with). `answer` is the
    exact answer of a `visual` item. `meta` carries provenance (template, photo, original labels).
    """

    id: str
    split: str
    condition: str
    category: str
    prompt: str
    image: str | None
    source: str
    answer: str | None = None
    source_text: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False)

    @property
    def chat(self) -> bool:
        """Whether the prompt goes through the model's chat template (False: raw text to continue)."""
        return self.condition not in RAW_CONDITIONS

    def image_path(self) -> Path | None:
        """Absolute path of the image, or None for a text-only item."""
        if self.image is None:
            return None
        if self.root is None:
            raise UserError(f"item {self.id} has image {self.image!r} but no dataset root; load it with load_dataset")
        return self.root / self.image

    def load_image(self) -> Image.Image | None:
        """The image as RGB (decoded now, so the file handle is closed), or None."""
        path = self.image_path()
        return None if path is None else decode_image(path, f"item {self.id}: {path}")

    def to_json(self) -> dict[str, Any]:
        """The item as one JSONL record (without its root)."""
        return {"id": self.id, "split": self.split, "condition": self.condition, "category": self.category,
                "prompt": self.prompt, "image": self.image, "source": self.source, "answer": self.answer,
                "source_text": self.source_text, "meta": dict(self.meta)}


def check_conditions(conditions: Any) -> tuple[str, ...]:
    """Validate a list of condition names (or None for all)."""
    if conditions is None:
        return CONDITIONS
    if isinstance(conditions, str):
        conditions = [c for c in conditions.split(",") if c]
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown or not conditions:
        raise UserError(f"unknown condition(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                        f"choose from {', '.join(CONDITIONS)}")
    return tuple(conditions)


def check_split(split: str | None) -> str | None:
    """Validate a split name (None means all splits)."""
    if split is not None and split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose {' or '.join(SPLITS)}")
    return split
