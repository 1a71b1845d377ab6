"""The experts artifact (runtime.experts) as the report's expert map: suppressed units per layer and module."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import UserError
from runtime.experts import parse_key, read_experts_file


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


def read_experts(directory: str | os.PathLike) -> ExpertMap:
    """Read and verify an experts directory (UserError naming the problem when it is not one)."""
    experts = read_experts_file(directory)
    parsed = [(parse_key(k), k, w) for k, w in experts.units]
    layers = tuple(sorted({layer for (layer, _), _, _ in parsed}))
    modules = tuple(dict.fromkeys(module for (_, module), _, _ in parsed))
    suppressed = np.zeros((len(layers), len(modules)), dtype=np.int64)
    widths = np.zeros_like(suppressed)
    for (layer, module), key, width in parsed:
        i, j = layers.index(layer), modules.index(module)
        suppressed[i, j] = int((experts.alpha[key] < 1).sum())
        widths[i, j] = width
    manifest = experts.manifest
    return ExpertMap(layers, modules, suppressed, widths,
                     np.concatenate([experts.auroc[k] for k, _ in experts.units]).astype(np.float64),
                     np.concatenate([experts.alpha[k] for k, _ in experts.units]).astype(np.float64),
                     dict(manifest.get("model") or {}), dict(manifest.get("method") or {}),
                     dict(manifest.get("calibration") or {}), experts.directory)


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
