"""What `run --dataset` names: an MM-TOXIC-QA dataset directory (the built one in the cache when omitted), or a
user's own red-team set in its published format, named by a scheme:

- `rtp:FILE.jsonl`: RealToxicityPrompts JSONL (text-only `standard` items: "Continue this text: ..." as a chat
  request);
- `rtp-continuation:FILE.jsonl`: the same file as `continuation` items (the prompt as raw text, no chat template:
  RealToxicityPrompts' own protocol, the one a base language model is measured with);
- `figstep:CSV[:IMAGES]`: FigStep's SafeBench CSV, with its typographic image folder when given;
- `mmsafetybench:DIR`: an MM-SafetyBench data root (processed_questions/ and imgs/).

External sets hold evaluation items only; their provenance (path, file hash, hash of the items) goes into the
report as the dataset record, so runtime.check compares two runs only when they answered the same items.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from runtime.artifacts import sha256_file, sha256_json
from runtime.errors import UserError
from runtime.mmtoxicqa.builder import cached_dataset
from runtime.mmtoxicqa.dataset import dataset_info, load_dataset
from runtime.mmtoxicqa.external import load_figstep, load_mmsafetybench, load_rtp_jsonl
from runtime.mmtoxicqa.items import Item

SCHEMES = {"rtp": "rtp:FILE.jsonl", "rtp-continuation": "rtp-continuation:FILE.jsonl", "figstep": "figstep:CSV[:IMAGES]", "mmsafetybench": "mmsafetybench:DIR"}
USAGE = f"{', '.join(SCHEMES.values())}, or an MM-TOXIC-QA dataset directory"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9_-]+):(.*)", re.DOTALL)  # 2+ letters: a Windows drive is no scheme


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed `--dataset`: `scheme` None for a dataset directory (`path` None: the cached default build)."""

    scheme: str | None
    path: Path | None
    images: Path | None = None

    def __str__(self) -> str:
        if self.scheme is None:
            return str(self.path) if self.path is not None else "the default MM-TOXIC-QA build"
        return f"{self.scheme}:{self.path}" + (f":{self.images}" if self.images is not None else "")


def _split_figstep(rest: str) -> tuple[str, str | None]:
    """CSV and optional IMAGES of `CSV[:IMAGES]`: split at the first ':' whose left side is a file (paths may
    hold ':'), else at the first ':'."""
    if Path(rest).is_file() or ":" not in rest:
        return rest, None
    for i, ch in enumerate(rest):
        if ch == ":" and Path(rest[:i]).is_file():
            return rest[:i], rest[i + 1:]
    csv, _, images = rest.partition(":")
    return csv, images


def parse_dataset(value: str | None) -> DatasetSpec:
    """The `--dataset` value as a spec; an unknown scheme, an empty path or a bare file is refused."""
    if value is None:
        return DatasetSpec(None, None)
    match = _SCHEME.fullmatch(value)
    if match is None or Path(value).exists():
        path = Path(value)
        if path.is_file():
            hint = f"figstep:{value} (FigStep CSV)" if path.suffix == ".csv" else f"rtp:{value} (RealToxicityPrompts)"
            raise UserError(f"--dataset {value} is a file; name its format, e.g. {hint}; an MM-TOXIC-QA dataset is "
                            f"a directory")
        return DatasetSpec(None, path)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SCHEMES:
        raise UserError(f"--dataset {value}: unknown scheme {match.group(1)!r}; use {USAGE}")
    images = None
    if scheme == "figstep":
        rest, images = _split_figstep(rest)
        if images == "":
            raise UserError(f"--dataset {value}: empty image folder after ':'; use {SCHEMES[scheme]}")
    if not rest:
        raise UserError(f"--dataset {value} names no path; use {SCHEMES[scheme]}")
    return DatasetSpec(scheme, Path(rest), Path(images) if images is not None else None)


def _external(scheme: str, path: Path, images: Path | None) -> list[Item]:
    if scheme in ("rtp", "rtp-continuation"):
        return load_rtp_jsonl(path, raw=scheme == "rtp-continuation")
    if scheme == "figstep":
        return load_figstep(path, images)
    return load_mmsafetybench(path)


def external_info(spec: DatasetSpec, path: Path, items: Sequence[Item]) -> dict[str, Any]:
    """Provenance of an external set for reports: scheme, paths, the file's sha256, a hash of all its items."""
    info: dict[str, Any] = {"scheme": spec.scheme, "path": str(path.resolve()),
                            "items_sha256": sha256_json([it.to_json() for it in items])}
    if path.is_file():
        info["file_sha256"] = sha256_file(path)
    if spec.images is not None:
        info["images"] = str(spec.images.resolve())
    return info


def load_spec(spec: DatasetSpec, split: str, conditions: Sequence[str]) -> tuple[list[Item], dict[str, Any]]:
    """The items `spec` names in `split` and `conditions` (file order), and the dataset's provenance."""
    path = spec.path if spec.path is not None else cached_dataset()
    if spec.scheme is None:
        return load_dataset(path, split=split, conditions=conditions), dataset_info(path)
    if split != "evaluation":
        raise UserError(f"--split {split}: {spec} holds evaluation items only (--split chooses among the "
                        f"built-in dataset's splits); drop --split")
    items = _external(spec.scheme, path, spec.images)
    if not items:
        raise UserError(f"{spec} holds no items; check the file")
    info = external_info(spec, path, items)
    chosen = [it for it in items if it.condition in conditions]
    if not chosen:
        present = sorted({it.condition for it in items})
        raise UserError(f"{spec} holds only condition(s) {', '.join(present)}; --conditions "
                        f"{','.join(conditions)} selects none of them")
    return chosen, info
