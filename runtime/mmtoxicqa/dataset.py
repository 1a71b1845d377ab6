"""Reading (and the low-level writing) of an MM-TOXIC-QA dataset directory.

Layout: `items.jsonl` (one item a line), `images/*.png`, `manifest.json`. Loading checks every line and every
image path before anything runs, so a bad dataset fails at once with the file and line to fix.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

from PIL import Image

from runtime.artifacts import MANIFEST, read_manifest, sha256_file
from runtime.errors import UserError
from runtime.mmtoxicqa.items import (CONDITIONS, FORMAT, FORMAT_VERSION, ITEMS_FILE, SPLITS, Item,
                                     check_conditions, check_split)

_REQUIRED = ("id", "split", "condition", "category", "prompt", "image", "source")


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding with fixed settings and no metadata, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_items(path: Path, items: Iterable[Item]) -> None:
    """Write items as JSONL in canonical form (sorted keys, UTF-8)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for item in items:
            f.write(json.dumps(item.to_json(), sort_keys=True, ensure_ascii=False) + "\n")


def safe_relative(root: Path, rel: Any, where: str) -> str:
    """Check that `rel` names a file inside `root` (no absolute path, no '..', no symlink escape) and exists."""
    if not isinstance(rel, str) or not rel:
        raise UserError(f"{where}: 'image' must be a relative path string or null, got {rel!r}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or os.path.isabs(rel) or ".." in pure.parts or "\\" in rel:
        raise UserError(f"{where}: image path {rel!r} leaves the dataset root {root}; "
                        f"image paths must be relative paths inside the dataset directory")
    full = (root / rel).resolve()
    if not full.is_relative_to(root.resolve()):
        raise UserError(f"{where}: image path {rel!r} resolves outside the dataset root {root} (a symlink?); "
                        f"copy the image into the dataset directory")
    if not full.is_file():
        raise UserError(f"{where}: image {rel!r} is missing from {root}; restore it or rebuild the dataset "
                        f"(python -m runtime.mmtoxicqa build --out DIR)")
    return rel


def _parse(line: str, path: Path, lineno: int, root: Path) -> Item:
    where = f"{path} line {lineno}"
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON ({e.msg}); fix or delete that line, or rebuild the dataset") from e
    if not isinstance(rec, dict):
        raise UserError(f"{where} is a JSON {type(rec).__name__}, not an object; each line must be one item")
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        raise UserError(f"{where} lacks field(s) {', '.join(missing)}; every item needs {', '.join(_REQUIRED)}")
    for key in ("id", "split", "condition", "category", "prompt", "source"):
        if not isinstance(rec[key], str):
            raise UserError(f"{where}: field {key!r} must be a string, got {rec[key]!r}")
    if rec["condition"] not in CONDITIONS:
        raise UserError(f"{where}: unknown condition {rec['condition']!r}; use one of {', '.join(CONDITIONS)}")
    if rec["split"] not in SPLITS:
        raise UserError(f"{where}: unknown split {rec['split']!r}; use one of {', '.join(SPLITS)}")
    image = None if rec["image"] is None else safe_relative(root, rec["image"], where)
    answer = rec.get("answer")
    if rec["condition"] == "visual" and not isinstance(answer, str):
        raise UserError(f"{where}: a visual item needs a string 'answer', got {answer!r}")
    if rec.get("source_text") is not None and not isinstance(rec["source_text"], str):
        raise UserError(f"{where}: 'source_text' must be a string or null, got {rec['source_text']!r}")
    meta = rec.get("meta") or {}
    if not isinstance(meta, dict):
        raise UserError(f"{where}: 'meta' must be an object, got {meta!r}")
    return Item(id=rec["id"], split=rec["split"], condition=rec["condition"], category=rec["category"],
                prompt=rec["prompt"], image=image, source=rec["source"], answer=answer,
                source_text=rec.get("source_text"), meta=meta, root=root)


def dataset_info(root: str | os.PathLike) -> dict[str, Any]:
    """Provenance of a dataset directory for reports: path, format version, fingerprint of its items."""
    root = Path(root)
    info: dict[str, Any] = {"path": str(root.resolve()), "items_sha256": sha256_file(root / ITEMS_FILE)}
    if (root / MANIFEST).is_file():
        manifest = read_manifest(root, verify=False)
        info.update({k: manifest.get(k) for k in ("kind", "format_version", "seed", "sizes")})
    return info


def load_dataset(root: str | os.PathLike, split: str | None = None, conditions: Sequence[str] | str | None = None,
                 verify: bool | None = None) -> list[Item]:
    """Items of the dataset at `root`, optionally filtered by split and conditions, in file order.

    Every line is validated (the whole file, not only the selection) so a corrupt dataset is refused at once.
    A dataset with a manifest.json (every built one) is checked against it: each file against its sha256, and
    each image an item names must be one of its files. `verify=True` also refuses a dataset without a manifest
    (a hand-made one, accepted by default); `verify=False` skips the checks.
    """
    root = Path(root)
    split = check_split(split)
    wanted = check_conditions(conditions)
    path = root / ITEMS_FILE
    if not path.is_file():
        raise UserError(f"{root} has no {ITEMS_FILE}: not an MM-TOXIC-QA dataset; "
                        f"build one with `python -m runtime.mmtoxicqa build --out DIR`")
    listed = None
    if (root / MANIFEST).is_file():
        manifest = read_manifest(root, verify=verify is not False)
        if manifest.get("kind") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{root} holds {manifest.get('kind')!r} version {manifest.get('format_version')!r}, "
                            f"not {FORMAT} version {FORMAT_VERSION}; rebuild it with this toolchain")
        listed = set(manifest.get("files") or {}) if verify is not False else None
        if listed is not None and ITEMS_FILE not in listed:
            raise UserError(f"{root}/{MANIFEST} does not list {ITEMS_FILE}, so the items cannot be verified; "
                            f"rebuild the dataset (python -m runtime.mmtoxicqa build --out DIR)")
    elif verify:
        raise UserError(f"{root} has no {MANIFEST} to verify against; rebuild the dataset")
    items: list[Item] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = _parse(line, path, lineno, root)
            if listed is not None and item.image is not None and PurePosixPath(item.image).as_posix() not in listed:
                raise UserError(f"{path} line {lineno}: image {item.image!r} is not among the files of {root}/{MANIFEST} "
                                f"(added after the build?); rebuild the dataset")
            if item.id in seen:
                raise UserError(f"{path} line {lineno}: duplicate item id {item.id!r} (first on line {seen[item.id]})")
            seen[item.id] = lineno
            items.append(item)
    return [it for it in items if (split is None or it.split == split) and it.condition in wanted]
