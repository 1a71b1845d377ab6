"""Artifact directories: atomic writes, manifests that catch modified files."""
from __future__ import annotations

import pytest

from runtime.artifacts import atomic_dir, read_manifest, write_manifest
from runtime.errors import UserError


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "out") as d:
            (d / "a.bin").write_bytes(b"1")
            raise ValueError("stage failed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_output(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists"):
        with atomic_dir(tmp_path / "out"):
            pass


def test_manifest_detects_modified_and_missing_files(tmp_path):
    with atomic_dir(tmp_path / "art") as d:
        (d / "w.bin").write_bytes(b"weights")
        (d / "sub").mkdir()
        (d / "sub" / "c.json").write_text("{}")
        write_manifest(d, "test", source="unit")
    m = read_manifest(tmp_path / "art")
    assert m["kind"] == "test" and set(m["files"]) == {"w.bin", "sub/c.json"}
    (tmp_path / "art" / "w.bin").write_bytes(b"weightz")
    with pytest.raises(UserError, match="w.bin does not match"):
        read_manifest(tmp_path / "art")
    (tmp_path / "art" / "w.bin").unlink()
    with pytest.raises(UserError, match="missing"):
        read_manifest(tmp_path / "art")
