"""Artifact directories: atomic writes and manifest.json with the sha256 of every file.

Every stage writes into a temporary sibling directory and renames it into place at the end, so an
interrupted or failed stage never leaves a half-written artifact behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from runtime.errors import UserError

MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a JSON-serialisable object in canonical form (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `final` only if the block succeeds."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise UserError(f"{final} already exists; choose another output directory or remove it first")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(directory: str | os.PathLike, kind: str, **fields: Any) -> dict:
    """Write manifest.json listing every file of `directory` with its sha256, plus `fields`."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"kind": kind, **fields, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(directory: str | os.PathLike, verify: bool = True) -> dict:
    """Read manifest.json; with `verify`, refuse a directory whose files do not match their sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory} has no {MANIFEST}: it was not written by this toolchain")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); rebuild the artifact") from e
    if verify:
        for rel, digest in manifest.get("files", {}).items():
            f = directory / rel
            if not f.is_file():
                raise UserError(f"{directory}: {rel} is listed in {MANIFEST} but missing; rebuild the artifact")
            if sha256_file(f) != digest:
                raise UserError(f"{directory}: {rel} does not match its sha256 in {MANIFEST} (modified or corrupt); rebuild the artifact")
    return manifest
