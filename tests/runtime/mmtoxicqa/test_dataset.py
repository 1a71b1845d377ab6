"""Loading a dataset directory: filters, and a clear refusal for every kind of bad input."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from runtime.errors import UserError
from runtime.mmtoxicqa.dataset import load_dataset

from .conftest import item, write_dataset

IMAGES = {"images/a.png": (255, 0, 0)}


def _records():
    return [item("s0", "standard", "insult", "Continue this text: you are"),
            item("v0", "visual", "colour", "What colour? Answer with a single word.", answer="red"),
            item("c0", "benign", "benign", "Describe it.", split="calibration")]


def test_filters_and_image_loading(tmp_path):
    root = write_dataset(tmp_path / "d", _records(), IMAGES)
    assert [it.id for it in load_dataset(root)] == ["s0", "v0", "c0"]
    assert [it.id for it in load_dataset(root, split="evaluation")] == ["s0", "v0"]
    assert [it.id for it in load_dataset(root, conditions=["visual", "benign"])] == ["v0", "c0"]
    assert [it.id for it in load_dataset(root, split="evaluation", conditions="visual")] == ["v0"]
    im = load_dataset(root)[0].load_image()
    assert im.size == (32, 32) and im.getpixel((0, 0)) == (255, 0, 0)


def test_corrupt_line_names_file_and_line(tmp_path):
    root = write_dataset(tmp_path / "d", _records(), IMAGES)
    lines = (root / "items.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"items.jsonl line 2 is not valid JSON"):
        load_dataset(root)


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd", "images/../../outside.png"])
def test_image_path_escaping_the_root_is_refused(tmp_path, path):
    (tmp_path / "outside.png").write_bytes(b"x")
    root = write_dataset(tmp_path / "d", [item("s0", "standard", "insult", "p", image=path)], IMAGES)
    with pytest.raises(UserError, match="leaves the dataset root"):
        load_dataset(root)


def test_symlink_escaping_the_root_is_refused(tmp_path):
    shutil.copy(__file__, tmp_path / "secret.png")
    root = write_dataset(tmp_path / "d", [item("s0", "standard", "insult", "p", image="images/link.png")], IMAGES)
    os.symlink(tmp_path / "secret.png", root / "images" / "link.png")
    with pytest.raises(UserError, match="resolves outside the dataset root"):
        load_dataset(root)


def test_missing_image(tmp_path):
    root = write_dataset(tmp_path / "d", [item("s0", "standard", "insult", "p", image="images/gone.png")], IMAGES)
    with pytest.raises(UserError, match=r"line 1: image 'images/gone.png' is missing"):
        load_dataset(root)


def test_unknown_condition_in_file_and_in_arguments(tmp_path):
    root = write_dataset(tmp_path / "d", [item("s0", "adversarial", "insult", "p")], IMAGES)
    with pytest.raises(UserError, match="line 1: unknown condition 'adversarial'.*standard, jailbreak"):
        load_dataset(root)
    root = write_dataset(tmp_path / "e", _records(), IMAGES)
    with pytest.raises(UserError, match="unknown condition.*'typo'"):
        load_dataset(root, conditions=["typo"])
    with pytest.raises(UserError, match="unknown split 'test'"):
        load_dataset(root, split="test")


def test_other_record_problems(tmp_path):
    rec = item("s0", "standard", "insult", "p")
    del rec["prompt"]
    with pytest.raises(UserError, match="lacks field\\(s\\) prompt"):
        load_dataset(write_dataset(tmp_path / "a", [rec], IMAGES))
    with pytest.raises(UserError, match="duplicate item id 's0'"):
        load_dataset(write_dataset(tmp_path / "b", [item("s0", "standard", "x", "p")] * 2, IMAGES))
    with pytest.raises(UserError, match="visual item needs a string 'answer'"):
        load_dataset(write_dataset(tmp_path / "c", [item("v", "visual", "colour", "q")], IMAGES))
    with pytest.raises(UserError, match="not an MM-TOXIC-QA dataset"):
        load_dataset(tmp_path)


def test_manifest_checks(small_dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(small_dataset, root)
    assert load_dataset(root, verify=True)
    png = next((root / "images").glob("scene-*.png"))
    png.write_bytes(png.read_bytes() + b"\0")
    with pytest.raises(UserError, match="does not match its sha256"):
        load_dataset(root, verify=True)
    man = json.loads((root / "manifest.json").read_text())
    man["format_version"] = 99
    (root / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UserError, match="version 99.*rebuild"):
        load_dataset(root, verify=False)
