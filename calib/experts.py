"""The experts artifact: per-unit AUROC and alpha for every hooked MLP Linear, with its provenance.

Layout of an experts directory:
- `experts.safetensors`: for every module key ("layers.{i}.mlp.{module}"), `<key>.auroc` and `<key>.alpha`
  (float32 vectors of the module's output width);
- `manifest.json` (kind "sgm-experts"): the model's name and fingerprint (config hash, hooked-weights hash),
  the calibration set's hash and summary, how activations were pooled, the factor method and its
  parameters, the unit list, and how many units have alpha < 1 per layer and module.

`load_experts(dir, model)` refuses an artifact made for another model (fingerprint, unit list or widths),
naming the mismatch. `python -m calib.experts --model NAME --out DIR` builds one (the CLI at the end).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from calib.factors import FactorSpec, factors_by_key, spec_from_dict
from runtime.artifacts import atomic_dir, read_manifest, write_manifest
from runtime.errors import UserError

KIND = "sgm-experts"
FORMAT_VERSION = 1
TENSORS = "experts.safetensors"


@dataclass(frozen=True)
class Experts:
    """AUROC and alpha per module key (float32, in unit order) plus the provenance that goes in the manifest."""

    units: tuple[tuple[str, int], ...]
    auroc: Mapping[str, np.ndarray]
    alpha: Mapping[str, np.ndarray]
    spec: FactorSpec
    model: Mapping[str, Any]
    calibration: Mapping[str, Any]
    scoring: Mapping[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, Any]:
        """Units with alpha < 1 per layer and module, and totals."""
        layers: dict[str, dict[str, int]] = {}
        for key, _ in self.units:
            layer, module = _parse_key(key)
            layers.setdefault(str(layer), {})[module] = int((self.alpha[key] < 1).sum())
        flat = np.concatenate([self.alpha[k] for k, _ in self.units])
        hit = flat[flat < 1]
        return {"per_layer": layers,
                "totals": {"units": int(flat.size), "suppressed": int(hit.size),
                           "suppressed_fraction": float(hit.size / flat.size),
                           "zeroed": int((flat == 0).sum()),
                           "min_alpha": float(flat.min()),
                           "mean_alpha_of_suppressed": float(hit.mean()) if hit.size else 1.0}}

    def with_spec(self, spec: FactorSpec) -> "Experts":
        """The same scores with factors recomputed by another method or parameters (sweeps need no rescoring)."""
        return replace(self, spec=spec, alpha=factors_by_key({k: self.auroc[k] for k, _ in self.units}, spec))


def _parse_key(key: str) -> tuple[int, str]:
    parts = key.split(".")
    if len(parts) != 4 or parts[0] != "layers" or parts[2] != "mlp" or not parts[1].isdigit():
        raise UserError(f"unit key {key!r} is not of the form 'layers.<i>.mlp.<module>'; rebuild the experts")
    return int(parts[1]), parts[3]


def model_info(model: Any) -> dict[str, Any]:
    """Name and fingerprint of a calib.models model, as recorded in the manifest."""
    return {"name": model.name, **model.fingerprint()}


def model_units(model: Any) -> tuple[tuple[str, int], ...]:
    """(key, width) of every hookable MLP Linear of a calib.models model, in layer order."""
    return tuple((u.key, u.width) for u in model.mlp_units())


def build_experts(units: Sequence[tuple[str, int]], auroc: Mapping[str, np.ndarray], spec: FactorSpec,
                  model: Mapping[str, Any], calibration: Mapping[str, Any],
                  scoring: Mapping[str, Any] | None = None) -> Experts:
    """Experts from AUROCs per module key: checks shapes, rounds AUROC to float32, computes alpha."""
    units = tuple((str(k), int(w)) for k, w in units)
    for key, _ in units:
        _parse_key(key)
    if set(auroc) != {k for k, _ in units}:
        missing = sorted({k for k, _ in units} - set(auroc))
        extra = sorted(set(auroc) - {k for k, _ in units})
        raise UserError(f"AUROCs do not cover the unit list (missing {missing[:3]}, unexpected {extra[:3]}); "
                        f"score every hooked module of the model")
    scores = {}
    for key, width in units:
        a = np.asarray(auroc[key], dtype=np.float32).reshape(-1)
        if a.size != width:
            raise UserError(f"{key}: {a.size} AUROCs for a module of width {width}; rescore the model")
        scores[key] = a
    # alpha is always computed from the float32 AUROCs that are stored, so reloading reproduces it exactly.
    for needed in ("name", "config_sha256", "mlp_weights_sha256"):
        if needed not in model:
            raise UserError(f"model info lacks {needed!r}; build it with calib.experts.model_info(model)")
    if "sha256" not in calibration:
        raise UserError("calibration info lacks 'sha256'; record the calibration set's hash")
    return Experts(units, scores, factors_by_key(scores, spec), spec, dict(model), dict(calibration),
                   dict(scoring or {}))


def save_experts(experts: Experts, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the artifact atomically (a failed write leaves nothing at `out`)."""
    from safetensors.numpy import save_file

    tensors = {}
    for key, _ in experts.units:
        tensors[f"{key}.auroc"] = np.ascontiguousarray(experts.auroc[key], dtype=np.float32)
        tensors[f"{key}.alpha"] = np.ascontiguousarray(experts.alpha[key], dtype=np.float32)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": KIND, "format_version": str(FORMAT_VERSION)})
        write_manifest(tmp, KIND, format_version=FORMAT_VERSION, model=dict(experts.model),
                       calibration=dict(experts.calibration), scoring=dict(experts.scoring),
                       method=experts.spec.to_dict(), units=[[k, w] for k, w in experts.units],
                       counts=experts.counts())
    return Path(out)


def load_experts(directory: str | os.PathLike, model: Any = None) -> Experts:
    """Read and verify an experts artifact; given a model, refuse it unless it was made for that model."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.get("kind") != KIND:
        raise UserError(f"{directory} is a {manifest.get('kind')!r} artifact, not {KIND!r}; "
                        f"pass the directory written by python -m calib.experts")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{directory} has experts format {manifest.get('format_version')!r}, this toolchain reads "
                        f"{FORMAT_VERSION}; rebuild the experts with this version")
    try:
        units = tuple((str(k), int(w)) for k, w in manifest["units"])
        spec = spec_from_dict(manifest["method"])
        info, calibration = manifest["model"], manifest["calibration"]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{directory}/manifest.json lacks or mangles {e}; rebuild the experts") from e
    try:
        tensors = load_file(str(directory / TENSORS))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{directory}/{TENSORS} cannot be read ({e}); rebuild the experts") from e
    expected = {f"{k}.{t}" for k, _ in units for t in ("auroc", "alpha")}
    if set(tensors) != expected:
        raise UserError(f"{directory}/{TENSORS} does not hold exactly auroc and alpha for the manifest's "
                        f"{len(units)} modules; rebuild the experts")
    for key, width in units:
        for t in ("auroc", "alpha"):
            v = tensors[f"{key}.{t}"]
            if v.shape != (width,) or v.dtype != np.float32:
                raise UserError(f"{directory}: {key}.{t} is {v.dtype}{list(v.shape)}, expected float32[{width}]; "
                                f"rebuild the experts")
    experts = Experts(units, {k: tensors[f"{k}.auroc"] for k, _ in units},
                      {k: tensors[f"{k}.alpha"] for k, _ in units}, spec, info, calibration,
                      manifest.get("scoring", {}))
    if model is not None:
        check_model(experts, model)
    return experts


def check_units(experts: Experts, units: Sequence[tuple[str, int]], model_name: str = "the model") -> None:
    """Refuse a model whose hookable modules (keys, order, widths) differ from the experts' unit list."""
    have = dict(units)
    want = dict(experts.units)
    made_for = experts.model.get("name", "another model")
    missing = [k for k in want if k not in have]
    if missing:
        raise UserError(f"experts made for {made_for} hook {len(want)} modules but {model_name} lacks "
                        f"{len(missing)} of them (first: {missing[0]}); use experts built for this model")
    extra = [k for k in have if k not in want]
    if extra:
        raise UserError(f"{model_name} has {len(extra)} MLP modules the experts (made for {made_for}) do not cover "
                        f"(first: {extra[0]}); use experts built for this model")
    for key, width in experts.units:
        if have[key] != width:
            raise UserError(f"width mismatch at {key}: experts made for {made_for} have {width} units, "
                            f"{model_name} has {have[key]}; use experts built for this model")


def check_model(experts: Experts, model: Any) -> None:
    """Refuse a model that is not the one the experts were made for (units, config hash, hooked weights)."""
    check_units(experts, model_units(model), model.name)
    fp = model.fingerprint()
    made_for = experts.model.get("name", "another model")
    if fp["config_sha256"] != experts.model.get("config_sha256"):
        raise UserError(f"config mismatch: the experts were made for {made_for} (config sha256 "
                        f"{str(experts.model.get('config_sha256'))[:12]}...), {model.name} has config sha256 "
                        f"{fp['config_sha256'][:12]}...; rebuild the experts for this model")
    if fp["mlp_weights_sha256"] != experts.model.get("mlp_weights_sha256"):
        raise UserError(f"weights mismatch: the hooked MLP weights of {model.name} differ from those the experts "
                        f"were made for ({made_for}): another checkpoint, or factors already folded in; "
                        f"rebuild the experts for this model, or load the unfolded checkpoint")
