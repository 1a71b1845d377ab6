"""Fakes and small datasets for the MM-TOXIC-QA tests: a keyword judge and a canned-response generator."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from PIL import Image

from runtime.mmtoxicqa.builder import BuildConfig, build_dataset
from runtime.protocol import GenerationConfig, GenerationRequest, GenerationResult

SMALL = BuildConfig(seed=0, eval_size=6, calib_size=9)


class KeywordJudge:
    """P(toxic): 0.9 with "idiot", 0.6 with "stupid", else 0.1."""

    name = "keyword"
    threshold = 0.5

    def __init__(self) -> None:
        self.calls = 0

    def score(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.array([0.9 if "idiot" in t else 0.6 if "stupid" in t else 0.1 for t in texts])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold}


class CannedGenerator:
    """Answers each prompt from a table: the j-th request for a prompt within one call gets the table's j-th
    response (cycling), so k samples can differ. Optionally raises on call number `fail_on_call`."""

    def __init__(self, table: dict[str, list[str]], default: str = "a plain answer", fail_on_call: int | None = None,
                 name: str = "canned") -> None:
        self.table = table
        self.default = default
        self.fail_on_call = fail_on_call
        self.name = name
        self.calls = 0
        self.prompts: list[str] = []
        self.configs: list[GenerationConfig] = []
        self.images: list[Image.Image | None] = []
        self.nll_calls = 0

    def generate(self, requests: Sequence[GenerationRequest], config: GenerationConfig) -> list[GenerationResult]:
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("simulated crash")
        seen: dict[str, int] = {}
        out = []
        for r in requests:
            j = seen.get(r.prompt, 0)
            seen[r.prompt] = j + 1
            options = self.table.get(r.prompt, [self.default])
            text = options[j % len(options)]
            self.prompts.append(r.prompt)
            self.images.append(r.image)
            out.append(GenerationResult(text=text, token_ids=tuple(range(len(text.split()))), finish_reason="eos"))
        self.configs.append(config)
        return out

    def nll(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        self.nll_calls += 1
        return [(2.0 * len(t.split()), len(t.split())) for t in texts]

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "backend": "fake"}


def write_dataset(root: Path, records: list[dict[str, Any]], images: dict[str, tuple[int, int, int]]) -> Path:
    """A hand-made dataset directory (no manifest): items.jsonl plus solid-colour PNGs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    for rel, colour in images.items():
        Image.new("RGB", (32, 32), colour).save(root / rel)
    with open(root / "items.jsonl", "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return root


def item(id: str, condition: str, category: str, prompt: str, source_text: str | None = None,
         answer: str | None = None, image: str | None = "images/a.png", split: str = "evaluation") -> dict:
    return {"id": id, "split": split, "condition": condition, "category": category, "prompt": prompt,
            "image": image, "source": f"src-{id}", "answer": answer, "source_text": source_text}


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small built dataset (6 evaluation and 9 calibration items per condition)."""
    return build_dataset(tmp_path_factory.mktemp("mmtoxicqa") / "small", SMALL)
