"""The hook intervention: scale each hooked MLP Linear's output by its per-unit alpha.

`row_scales(experts)` is the single source of the per-module scale vectors; the hooks here and the weight
fold in compile/ both consume it, so the reference intervention and the deployed checkpoint apply the
same numbers. Scaling a Linear's output by a vector equals scaling the rows of its weight (and bias).
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from calib.experts import Experts, check_units, model_units
from calib.models.base import MultimodalModel
from runtime.errors import UserError
from runtime.protocol import GenerationConfig, GenerationRequest, GenerationResult


def row_scales(experts: Experts, include_identity: bool = False) -> dict[str, torch.Tensor]:
    """float32 scale vector [width] per module key, in unit order.

    Modules whose alpha is all 1 are left out (nothing to hook or fold) unless `include_identity`.
    """
    out = {}
    for key, width in experts.units:
        alpha = np.asarray(experts.alpha[key], dtype=np.float32)
        if alpha.shape != (width,):
            raise UserError(f"{key}: alpha has shape {alpha.shape}, expected ({width},); rebuild the experts")
        if include_identity or (alpha != 1).any():
            out[key] = torch.from_numpy(alpha.copy())
    return out


def _scales_for(model: MultimodalModel, factors: Experts | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    units = dict(model_units(model))
    if isinstance(factors, Experts):
        check_units(factors, list(units.items()), model.name)
        return row_scales(factors)
    scales = dict(factors)
    for key, scale in scales.items():
        if key not in units:
            raise UserError(f"scale for {key!r}, which {model.name} does not have (it has {len(units)} MLP modules, "
                            f"from {next(iter(units))} to {list(units)[-1]}); use scales built for this model")
        if tuple(scale.shape) != (units[key],):
            raise UserError(f"scale for {key} has shape {tuple(scale.shape)}, {model.name} needs ({units[key]},)")
    return scales


@contextlib.contextmanager
def suppress(model: MultimodalModel, factors: Experts | Mapping[str, torch.Tensor]) -> Iterator[list[str]]:
    """Within the block, every hooked module's output is multiplied by its scale; hooks go on exit.

    `factors` is an experts artifact (its unit list is checked against the model; the fingerprint is
    checked by `load_experts(dir, model)`) or `row_scales`-style tensors. Yields the hooked module keys.
    """
    by_key = {u.key: u for u in model.mlp_units()}
    handles = []
    try:
        for key, scale in _scales_for(model, factors).items():
            linear = model.mlp_linear(by_key[key])
            s = scale.to(device=linear.weight.device, dtype=linear.weight.dtype)

            def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor, s: torch.Tensor = s) -> torch.Tensor:
                return output * s

            handles.append((key, linear.register_forward_hook(hook)))
        yield [k for k, _ in handles]
    finally:
        for _, h in handles:
            h.remove()


def scales_sha256(scales: Mapping[str, torch.Tensor]) -> str:
    """Hash of a set of row scales (keys, shapes and float32 values), to tell interventions apart."""
    h = hashlib.sha256()
    for key in sorted(scales):
        h.update(key.encode())
        h.update(scales[key].to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class Suppressed:
    """A model with the hook intervention on during every call: a runtime.protocol.Generator, so the
    MM-TOXIC-QA runner measures the intervened model exactly as it measures any other backend."""

    def __init__(self, model: MultimodalModel, factors: Experts | Mapping[str, torch.Tensor]) -> None:
        self.model = model
        self.scales = _scales_for(model, factors)
        self.info: dict[str, Any] = {"kind": "hooks", "scales_sha256": scales_sha256(self.scales),
                                     "modules": len(self.scales),
                                     "units_suppressed": int(sum(int((s < 1).sum()) for s in self.scales.values()))}
        if isinstance(factors, Experts):
            self.info.update(method=factors.spec.to_dict(), calibration_sha256=factors.calibration.get("sha256"))

    def generate(self, requests: Sequence[GenerationRequest], config: GenerationConfig,
                 **kwargs: Any) -> list[GenerationResult]:
        with suppress(self.model, self.scales):
            return self.model.generate(requests, config, **kwargs)

    def nll(self, texts: Sequence[str], **kwargs: Any) -> list[tuple[float, int]]:
        with suppress(self.model, self.scales):
            return self.model.nll(texts, **kwargs)

    def describe(self) -> dict[str, Any]:
        return {**self.model.describe(), "intervention": self.info}
