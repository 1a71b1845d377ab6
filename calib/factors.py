"""Per-unit factors from AUROCs: SGM's expertise-weighted soft suppression and the AurA/Det0/Damp baselines.

This is the one place factors are computed; the hook intervention and the weight fold both consume the
resulting alpha (through `calib.intervention.row_scales`), so they cannot drift apart.

- sgm:  alpha = clip(1 - s (2 AUROC - 1), 0, 1) for units with AUROC > threshold, 1 otherwise; an
        optional top-k keeps only the k highest-AUROC units among those (global across all modules; units
        tied across the k-th place are left out together, never picked by position).
- aura: sgm with s = 1, threshold 0.5 and no cap (Suau et al., 2024).
- det0: alpha = 0 on the global top-k units by AUROC, 1 elsewhere.
- damp: alpha = a fixed value on the global top-k units by AUROC, 1 elsewhere.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from runtime.errors import UserError

METHODS = ("sgm", "aura", "det0", "damp")
# The default cap on suppressed units, as a share of all scored units, chosen on smol-llava's calibration split
# (docs/factors.md): no setting lowered the harmful rate measurably, so the default is the largest measured expert
# set within the regression gate's default limits (perplexity <= +10%, visual accuracy >= -5 pp): 0.3% (+1.8%,
# -2 pp). 1% cost +9.2% and -8 pp; uncapped SGM at s = 1 (= AurA) touched 57% of units and broke the model.
DEFAULT_TOP_FRACTION = 0.003
_TAKES = {"sgm": ("strength", "threshold", "top_k"), "aura": (), "det0": ("top_k",), "damp": ("top_k", "damp_alpha")}


@dataclass(frozen=True)
class FactorSpec:
    """A factor method and its resolved parameters (build it with `factor_spec`, which validates)."""

    method: str = "sgm"
    strength: float | None = 1.0
    threshold: float | None = 0.5
    top_k: int | None = None
    damp_alpha: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def factor_spec(method: str = "sgm", strength: float | None = None, threshold: float | None = None,
                top_k: int | None = None, damp_alpha: float | None = None) -> FactorSpec:
    """Resolve a method's defaults and refuse parameters the method does not take."""
    given = {"strength": strength, "threshold": threshold, "top_k": top_k, "damp_alpha": damp_alpha}
    takes = _TAKES
    if method not in takes:
        raise UserError(f"unknown factor method {method!r}; choose one of {', '.join(METHODS)}")
    extra = [k for k, v in given.items() if v is not None and k not in takes[method]]
    if extra:
        raise UserError(f"method {method!r} does not take {', '.join(extra)}"
                        + ("; aura fixes strength 1 and threshold 0.5: use method 'sgm' to change them"
                           if method == "aura" else ""))
    if method in ("det0", "damp") and top_k is None:
        raise UserError(f"method {method!r} needs top_k (how many units to suppress)")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise UserError(f"top_k must be a positive integer, got {top_k!r}")
    if strength is not None and not strength >= 0:
        raise UserError(f"strength must be >= 0, got {strength!r}")
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise UserError(f"threshold must be in [0, 1), got {threshold!r}")
    if method == "damp":
        damp_alpha = 0.5 if damp_alpha is None else damp_alpha
        if not 0.0 <= damp_alpha <= 1.0:
            raise UserError(f"damp_alpha must be in [0, 1], got {damp_alpha!r}")
        return FactorSpec("damp", None, None, int(top_k), float(damp_alpha))
    if method == "det0":
        return FactorSpec("det0", None, None, int(top_k), None)
    if method == "aura":
        return FactorSpec("aura", 1.0, 0.5, None, None)
    return FactorSpec("sgm", 1.0 if strength is None else float(strength),
                      0.5 if threshold is None else float(threshold), None if top_k is None else int(top_k))


def spec_from_dict(d: Mapping[str, Any]) -> FactorSpec:
    """The spec recorded by `FactorSpec.to_dict`, refused unless it is one `factor_spec` would build."""
    try:
        spec = FactorSpec(**d)
    except TypeError as e:
        raise UserError(f"factor method record {dict(d)} is malformed ({e}); rebuild the experts") from e
    if spec.method not in _TAKES:
        raise UserError(f"unknown factor method {spec.method!r}; choose one of {', '.join(METHODS)}")
    resolved = factor_spec(spec.method, **{k: getattr(spec, k) for k in _TAKES[spec.method]})
    if resolved != spec:
        raise UserError(f"factor method record {dict(d)} is inconsistent (expected {resolved.to_dict()}); "
                        f"rebuild the experts")
    return spec


def top_k_for(fraction: float, n_units: int) -> int | None:
    """The cap for `fraction` of `n_units` (at least one unit); None for fraction 0 (no cap)."""
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"the top fraction must be in [0, 1) (0 = no cap), got {fraction}")
    if n_units < 1:
        raise UserError(f"no units to cap (n_units = {n_units})")
    return None if fraction == 0 else max(1, round(fraction * n_units))


def _top_k(auroc: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Mask of at most k candidates, chosen by AUROC alone: units tied at the k-th highest AUROC are all taken
    when they fit in k and all left out when they would cross it, so the choice never depends on unit order."""
    mask = np.zeros(auroc.shape, dtype=bool)
    values = auroc[candidates]
    if values.size <= k:
        mask[candidates] = True
        return mask
    kth = np.partition(values, values.size - k)[values.size - k]
    above = candidates & (auroc > kth)
    tied = candidates & (auroc == kth)
    return above | tied if int(above.sum()) + int(tied.sum()) <= k else above


def factors(auroc: np.ndarray, spec: FactorSpec) -> np.ndarray:
    """alpha (float32) for a flat vector of unit AUROCs; top-k is global over the whole vector."""
    a = np.asarray(auroc, dtype=np.float64)
    if a.ndim != 1:
        raise UserError(f"factors take a flat vector of AUROCs, got shape {a.shape}")
    if not (np.isfinite(a).all() and (a >= 0).all() and (a <= 1).all()):
        raise UserError("AUROCs must be finite and in [0, 1]; recompute them with calib.scoring.auroc")
    if spec.top_k is not None and spec.top_k > a.size:
        raise UserError(f"top_k = {spec.top_k} exceeds the {a.size} units scored; choose a smaller top_k")
    alpha = np.ones(a.shape, dtype=np.float64)
    if spec.method in ("sgm", "aura"):
        selected = a > spec.threshold
        if spec.top_k is not None:
            selected = _top_k(a, selected, spec.top_k)
        alpha[selected] = np.clip(1.0 - spec.strength * (2.0 * a[selected] - 1.0), 0.0, 1.0)
    elif spec.method == "det0":
        alpha[_top_k(a, np.ones(a.shape, dtype=bool), spec.top_k)] = 0.0
    elif spec.method == "damp":
        alpha[_top_k(a, np.ones(a.shape, dtype=bool), spec.top_k)] = spec.damp_alpha
    else:
        raise UserError(f"unknown factor method {spec.method!r}; build specs with calib.factors.factor_spec")
    return alpha.astype(np.float32)


def factors_by_key(auroc: Mapping[str, np.ndarray], spec: FactorSpec) -> dict[str, np.ndarray]:
    """alpha per module key for AUROCs per module key, with top-k global across all modules."""
    keys = list(auroc)
    if not keys:
        raise UserError("no AUROCs given; score the model's units first")
    parts = [np.asarray(auroc[k]).reshape(-1) for k in keys]
    flat = factors(np.concatenate(parts), spec)
    out, start = {}, 0
    for k, p in zip(keys, parts):
        out[k] = flat[start:start + p.size]
        start += p.size
    return out
