"""The experts artifact (written by calib.experts) read without torch or calib, for the report's expert map.

Layout: `experts.safetensors` with `<key>.auroc` and `<key>.alpha` (float32, one per unit) for every module key
`layers.<i>.mlp.<module>`, and `manifest.json` of kind "sgm-experts" (files checked against their sha256).
A unit is suppressed when its alpha is below 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import read_manifest
from runtime.errors import UserError

KIND = "sgm-experts"
FORMAT_VERSION = 1
TENSORS = "experts.safetensors"


@dataclass(frozen=True)
class ExpertMap:
    """Per layer and module: units and suppressed units; all AUROCs and alphas (unit order); provenance."""

    layers: tuple[int, ...]
    modules: tuple[str, ...]
    suppressed: np.ndarray  # (len(layers), len(modules)) int
    units: np.ndarray  # (len(layers), len(modules)) int
    auroc: np.ndarray
    alpha: np.ndarray
    model: dict[str, Any]
    method: dict[str, Any]
    calibration: dict[str, Any]
    path: Path


def _parse_key(key: str, directory: Path) -> tuple[int, str]:
    parts = key.split(".")
    if len(parts) != 4 or parts[0] != "layers" or parts[2] != "mlp" or not parts[1].isdigit():
        raise UserError(f"{directory}: unit key {key!r} is not 'layers.<i>.mlp.<module>'; rebuild the experts")
    return int(parts[1]), parts[3]


def read_experts(directory: str | os.PathLike) -> ExpertMap:
    """Read and verify an experts directory (UserError naming the problem when it is not one)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--experts {directory} is not a directory; pass the directory written by python -m calib.experts")
    manifest = read_manifest(directory)
    if manifest.get("kind") != KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{directory} is a {manifest.get('kind')!r} artifact version {manifest.get('format_version')!r}, "
                        f"not {KIND!r} version {FORMAT_VERSION}; pass an experts directory built by this toolchain")
    try:
        units = [(str(k), int(w)) for k, w in manifest["units"]]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{directory}/manifest.json has no valid unit list ({e}); rebuild the experts") from e
    try:
        tensors = load_file(str(directory / TENSORS))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{directory}/{TENSORS} cannot be read ({e}); rebuild the experts") from e
    parsed = [(_parse_key(k, directory), k, w) for k, w in units]
    layers = tuple(sorted({layer for (layer, _), _, _ in parsed}))
    modules = tuple(dict.fromkeys(module for (_, module), _, _ in parsed))
    suppressed = np.zeros((len(layers), len(modules)), dtype=np.int64)
    widths = np.zeros_like(suppressed)
    aurocs, alphas = [], []
    for (layer, module), key, width in parsed:
        auroc, alpha = tensors.get(f"{key}.auroc"), tensors.get(f"{key}.alpha")
        if auroc is None or alpha is None or auroc.shape != (width,) or alpha.shape != (width,):
            raise UserError(f"{directory}/{TENSORS} lacks {key}.auroc/.alpha of {width} units; rebuild the experts")
        i, j = layers.index(layer), modules.index(module)
        suppressed[i, j] = int((alpha < 1).sum())
        widths[i, j] = width
        aurocs.append(auroc)
        alphas.append(alpha)
    if not parsed:
        raise UserError(f"{directory}/manifest.json lists no units; rebuild the experts")
    return ExpertMap(layers, modules, suppressed, widths, np.concatenate(aurocs).astype(np.float64),
                     np.concatenate(alphas).astype(np.float64), dict(manifest.get("model") or {}),
                     dict(manifest.get("method") or {}), dict(manifest.get("calibration") or {}), directory)


def _base_weights(model: dict[str, Any]) -> str | None:
    """The hooked-MLP weights hash of the model a run's record says experts apply to: the experts' own model for
    a folded bundle, else the run's model itself (a PyTorch model or an unfolded bundle); None when unrecorded."""
    source = model.get("source") if isinstance(model.get("source"), dict) else None
    if source is not None:
        experts = source.get("experts") if isinstance(source.get("experts"), dict) else None
        if experts is not None and isinstance(experts.get("model"), dict):
            return experts["model"].get("mlp_weights_sha256")
        return None if source.get("folded") else source.get("mlp_weights_sha256")
    return model.get("mlp_weights_sha256")


def check_for_run(experts: ExpertMap, report: dict[str, Any], path: Path) -> None:
    """Refuse an expert map made for another model than the run's (compared by the hooked-MLP weights hash)."""
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    have, want = _base_weights(model), experts.model.get("mlp_weights_sha256")
    if have and want and have != want:
        raise UserError(f"--experts {experts.path} were made for {experts.model.get('name', 'another model')} "
                        f"(MLP weights {want[:12]}...), but {path} ran {model.get('model', 'another model')} "
                        f"(MLP weights {have[:12]}...); pass the experts that model was calibrated with")
