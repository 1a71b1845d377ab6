"""The experts artifact's format, read and written without torch (calib.experts builds one; the report maps it).

Layout of an experts directory:
- `experts.safetensors`: for every module key `layers.<i>.mlp.<module>`, `<key>.auroc` and `<key>.alpha`
  (float32 vectors of the module's output width);
- `manifest.json` (kind "sgm-experts"): the unit list `[[key, width], ...]` in layer order, plus what the writer
  records (model fingerprint, calibration, scoring, factor method, counts); every file checked against its sha256.
A unit is suppressed when its alpha is below 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.artifacts import read_manifest, write_manifest
from runtime.errors import UserError

KIND = "sgm-experts"
FORMAT_VERSION = 1
TENSORS = "experts.safetensors"
FIELDS = ("auroc", "alpha")


@dataclass(frozen=True)
class ExpertsFile:
    """A verified experts directory: its manifest, unit list, and AUROC and alpha per module key (float32)."""

    directory: Path
    manifest: dict[str, Any]
    units: tuple[tuple[str, int], ...]
    auroc: dict[str, np.ndarray]
    alpha: dict[str, np.ndarray]


def parse_key(key: str) -> tuple[int, str]:
    """`layers.<i>.mlp.<module>` -> (i, module)."""
    parts = key.split(".")
    if len(parts) != 4 or parts[0] != "layers" or parts[2] != "mlp" or not parts[1].isdigit():
        raise UserError(f"unit key {key!r} is not of the form 'layers.<i>.mlp.<module>'; rebuild the experts")
    return int(parts[1]), parts[3]


def write_experts_file(directory: str | os.PathLike, units: Sequence[tuple[str, int]],
                       auroc: Mapping[str, np.ndarray], alpha: Mapping[str, np.ndarray], **fields: Any) -> dict:
    """Write the tensors and the manifest (with `fields`) into `directory`; returns the manifest."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    tensors = {f"{key}.{name}": np.ascontiguousarray(values[key], dtype=np.float32)
               for key, _ in units for name, values in zip(FIELDS, (auroc, alpha))}
    save_file(tensors, str(directory / TENSORS), metadata={"format": KIND, "format_version": str(FORMAT_VERSION)})
    return write_manifest(directory, KIND, format_version=FORMAT_VERSION, units=[[k, w] for k, w in units], **fields)


def read_experts_file(directory: str | os.PathLike) -> ExpertsFile:
    """Read and verify an experts directory (a UserError naming the problem when it is not one)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory; pass the directory written by python -m calib.experts")
    manifest = read_manifest(directory)
    if manifest.get("kind") != KIND:
        raise UserError(f"{directory} is a {manifest.get('kind')!r} artifact, not {KIND!r}; "
                        f"pass the directory written by python -m calib.experts")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{directory} has experts format {manifest.get('format_version')!r}, this toolchain reads "
                        f"{FORMAT_VERSION}; rebuild the experts with this version")
    try:
        units = tuple((str(k), int(w)) for k, w in manifest["units"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{directory}/manifest.json has no valid unit list ({e}); rebuild the experts") from e
    if not units:
        raise UserError(f"{directory}/manifest.json lists no units; rebuild the experts")
    for key, _ in units:
        parse_key(key)
    try:
        tensors = load_file(str(directory / TENSORS))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{directory}/{TENSORS} cannot be read ({e}); rebuild the experts") from e
    if set(tensors) != {f"{k}.{name}" for k, _ in units for name in FIELDS}:
        raise UserError(f"{directory}/{TENSORS} does not hold exactly auroc and alpha for the manifest's "
                        f"{len(units)} modules; rebuild the experts")
    for key, width in units:
        for name in FIELDS:
            v = tensors[f"{key}.{name}"]
            if v.shape != (width,) or v.dtype != np.float32:
                raise UserError(f"{directory}: {key}.{name} is {v.dtype}{list(v.shape)}, expected float32[{width}]; "
                                f"rebuild the experts")
    return ExpertsFile(directory, manifest, units, {k: tensors[f"{k}.auroc"] for k, _ in units},
                       {k: tensors[f"{k}.alpha"] for k, _ in units})
