"""Prompts outside what the model can take: the bundle records the model's context, and both the compiled
runtime and the PyTorch path refuse an empty prompt and one that would run past the context before running."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from runtime import cli
from runtime.artifacts import write_manifest
from runtime.bundle import RUNTIME_FILE, TOKENIZER_FILE, load_bundle
from runtime.errors import UserError
from runtime.protocol import GenerationConfig, GenerationRequest

_spec = importlib.util.spec_from_file_location("bundle_fakes", Path(__file__).resolve().parents[1] / "bundle_fakes.py")
_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fakes)

CONTEXT = 64
WORDS = ["[UNK]", "USER:", "ASSISTANT:", "</s>", "<image>", "a", "b", "c"]


def _bundle(root: Path, context: int | None = CONTEXT) -> Path:
    """The hand-made bundle with a word-level tokenizer (no BOS: an empty raw text has no tokens, as smol-llava's)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    spec = dict(_fakes.SPEC)
    if context is not None:
        spec["context_length"] = context
    _fakes.make_bundle(root, spec)
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(root / TOKENIZER_FILE))
    write_manifest(root, "sgm-bundle", format_version=1)
    return root


class NothingRuns:
    """A backend that fails the test if the generator runs any graph."""

    left_padding = True

    def __getattr__(self, name):
        raise AssertionError(f"the backend's {name} ran")


@pytest.fixture
def generator(tmp_path: Path):
    from runtime.generate import BundleGenerator

    return BundleGenerator(load_bundle(_bundle(tmp_path / "b")), NothingRuns())


def test_prompt_past_the_context_is_refused_before_running(generator) -> None:
    config = GenerationConfig(max_new_tokens=8)
    long = GenerationRequest(" ".join(["a"] * (CONTEXT - 4)), chat=False)
    with pytest.raises(UserError, match=rf"prompt 2 of 2 has {CONTEXT - 4} tokens .* context holds {CONTEXT} positions"):
        generator.generate([GenerationRequest("a b", chat=False), long], config)
    with pytest.raises(UserError, match="shorten the prompt to at most 56 tokens or lower max_new_tokens"):
        generator.generate([GenerationRequest("USER: a " * 40)], config)


def test_a_prompt_that_just_fits_is_accepted() -> None:
    from runtime.protocol import check_prompts

    check_prompts([CONTEXT - 8, 1], 8, CONTEXT)
    check_prompts([10 ** 6], 8, None)  # unknown context (an older bundle): nothing to refuse
    with pytest.raises(UserError):
        check_prompts([CONTEXT - 7], 8, CONTEXT)


def test_empty_raw_prompt_is_refused_in_the_compiled_runtime(generator) -> None:
    with pytest.raises(UserError, match="has no tokens"):
        generator.generate([GenerationRequest("", chat=False)], GenerationConfig(max_new_tokens=4))


def test_runtime_chat_raw_empty_is_a_clear_error(tmp_path: Path, capsys) -> None:
    from runtime.chat import main

    bundle = _bundle(tmp_path / "b")
    assert cli.run(main, ["", "--bundle", str(bundle), "--raw", "--threads", "1"]) == 2
    assert "the prompt has no tokens" in capsys.readouterr().err


def test_bundle_spec_reads_the_context_and_keeps_older_bundles(tmp_path: Path) -> None:
    assert load_bundle(_bundle(tmp_path / "new")).spec.context_length == CONTEXT
    assert load_bundle(_bundle(tmp_path / "old", context=None)).spec.context_length is None
    bad = _bundle(tmp_path / "bad")
    config = json.loads((bad / RUNTIME_FILE).read_text())
    config["context_length"] = 0
    (bad / RUNTIME_FILE).write_text(json.dumps(config))
    write_manifest(bad, "sgm-bundle", format_version=1)
    with pytest.raises(UserError, match="context_length"):
        load_bundle(bad)


def test_export_records_the_models_context(tiny_llava) -> None:
    from compile.export.bundle import runtime_config

    assert runtime_config(tiny_llava)["context_length"] == tiny_llava.context_length() == 4096


def test_pytorch_path_refuses_a_prompt_past_the_context(tiny_llava, monkeypatch) -> None:
    def no_run(*a, **k):
        raise AssertionError("the model ran")

    monkeypatch.setattr(tiny_llava, "generate_embeds", no_run)
    long = GenerationRequest("hello " * 4200, chat=False)
    with pytest.raises(UserError, match=r"tokens and asks for 16 new ones, but the model's context holds 4096"):
        tiny_llava.generate([long], GenerationConfig(max_new_tokens=16))


def test_pytorch_path_refuses_an_empty_prompt(tiny_llava, monkeypatch) -> None:
    monkeypatch.setattr(type(tiny_llava), "add_special_tokens", lambda self: False)  # as smol-llava: no BOS
    with pytest.raises(UserError, match="has no tokens"):
        tiny_llava.generate([GenerationRequest("", chat=False)], GenerationConfig(max_new_tokens=4))


def test_calib_chat_raw_empty_is_a_clear_error(tiny_llava, monkeypatch, capsys) -> None:
    import calib.chat
    import calib.models

    monkeypatch.setattr(type(tiny_llava), "add_special_tokens", lambda self: False)
    monkeypatch.setattr(calib.models, "load_model", lambda name: tiny_llava)
    assert cli.run(calib.chat.main, ["", "--model", "tiny-random-llava", "--raw", "--max-new-tokens", "4"]) == 2
    assert "the prompt has no tokens" in capsys.readouterr().err
