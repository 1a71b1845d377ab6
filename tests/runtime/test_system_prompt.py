"""SGM*'s safety system prompt: one rule for where it goes, carried by a bundle's runtime.json or put ahead of a
model's requests by SystemPrompted, and recorded in the report's provenance."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import pytest

from runtime.artifacts import MANIFEST, write_manifest
from runtime.bundle import RUNTIME_FILE
from runtime.errors import UserError
from runtime.generate import BundleGenerator
from runtime.protocol import (SAFETY_PROMPT, GenerationConfig, GenerationRequest, GenerationResult, SystemPrompted,
                              system_prompt_text, with_system_prompt)


def test_the_prompt_goes_ahead_of_the_request_text():
    assert with_system_prompt("Tell me", "Be kind.") == "Be kind.\n\nTell me"
    assert with_system_prompt("Tell me", None) == "Tell me"
    assert system_prompt_text("safety") == SAFETY_PROMPT and "toxic" in SAFETY_PROMPT
    assert system_prompt_text(None) is None and system_prompt_text("  ") is None
    assert system_prompt_text("Be kind.") == "Be kind."


class _Echo:
    """A generator that answers each request with its own prompt text."""

    def generate(self, requests: Sequence[GenerationRequest], config: GenerationConfig,
                 **options: Any) -> list[GenerationResult]:
        return [GenerationResult(r.prompt, (), "eos") for r in requests]

    def nll(self, texts: Sequence[str], **options: Any) -> list[tuple[float, int]]:
        return [(float(len(t)), 1) for t in texts]

    def describe(self) -> dict[str, Any]:
        return {"model": "echo"}


def test_system_prompted_changes_requests_not_perplexity():
    gen = SystemPrompted(_Echo(), "Be kind.")
    [chat, raw] = gen.generate([GenerationRequest("Why?"), GenerationRequest("The man", chat=False)],
                               GenerationConfig())
    assert chat.text == "Be kind.\n\nWhy?" and raw.text == "Be kind.\n\nThe man"
    assert gen.nll(["abc"]) == [(3.0, 1)]  # the corpus is scored as it is
    assert gen.describe() == {"model": "echo", "system_prompt": "Be kind."}


def _set_system_prompt(bundle: Path, text: Any) -> None:
    spec = json.loads((bundle / RUNTIME_FILE).read_text())
    spec["prompt"]["system_prompt"] = text
    (bundle / RUNTIME_FILE).write_text(json.dumps(spec))
    manifest = json.loads((bundle / MANIFEST).read_text())
    write_manifest(bundle, manifest.pop("kind"), **{k: v for k, v in manifest.items() if k != "files"})


def test_a_bundle_applies_its_runtime_json_system_prompt(tiny_bundle: Path, tmp_path: Path):
    """A bundle carrying the prompt generates exactly what the plain bundle generates for the prefixed request."""
    prompted = Path(shutil.copytree(tiny_bundle, tmp_path / "prompted"))
    _set_system_prompt(prompted, "Be kind.")
    plain, star = BundleGenerator.open(tiny_bundle), BundleGenerator.open(prompted)
    config = GenerationConfig(max_new_tokens=6)
    for chat in (True, False):
        [a] = star.generate([GenerationRequest("what is this", chat=chat)], config)
        [b] = plain.generate([GenerationRequest("Be kind.\n\nwhat is this", chat=chat)], config)
        [c] = plain.generate([GenerationRequest("what is this", chat=chat)], config)
        assert a.token_ids == b.token_ids
        assert star.tokenizer.request_ids(GenerationRequest("what is this", chat=chat)) != \
            plain.tokenizer.request_ids(GenerationRequest("what is this", chat=chat))
        assert c.text is not None
    assert star.describe()["system_prompt"] == "Be kind." and "system_prompt" not in plain.describe()
    with pytest.raises(UserError, match="already puts a system prompt"):
        SystemPrompted(star, "Be brief.")  # never two prompts stacked


@pytest.mark.parametrize("bad", ["", "   ", 3])
def test_a_bad_system_prompt_in_runtime_json_is_refused(tiny_bundle: Path, tmp_path: Path, bad: Any):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bad"))
    _set_system_prompt(bundle, bad)
    with pytest.raises(UserError, match="prompt.system_prompt must be a non-empty string"):
        BundleGenerator.open(bundle)
