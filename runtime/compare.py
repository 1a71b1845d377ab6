"""One comparator, Polygraphy-style: two runs of the same inputs (two graphs, two generators, a model and its
transformed self), compared in one format: the largest |difference|, top-1 agreement over the compared positions
and the first position whose top-1 (or greedy token) differs.

    parts = [compare_arrays("decoder", "prefill logits", run_a(x), run_b(x)) for x in inputs]
    print(format_comparison(combine("decoder", f"{len(parts)} prompts", parts, tolerance=2e-3)))

Torch-free: runs give numpy arrays [..., V]. Export validation, the fold check and quantized agreement report a
`Comparison`; the fused decoder check computes its numbers with these functions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

ROWS = 64  # rows compared at a time: all-position logits of a long batch over a large vocabulary take gigabytes


@dataclass(frozen=True)
class Comparison:
    """Two runs on the same inputs: `name` says what against what, `what` on which inputs."""

    name: str
    what: str
    positions: int
    max_abs_diff: float
    top1_agreement: float
    first_difference: int | None  # the first position whose top-1 or greedy token differs; None: none does
    tolerance: float | None = None  # on max_abs_diff; None: measured, not gated
    extra: Mapping[str, Any] = field(default_factory=dict)  # what a check measures beside these (kept in to_dict)

    @property
    def ok(self) -> bool:
        return self.tolerance is None or bool(self.max_abs_diff <= self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "extra"}, **d["extra"], "ok": self.ok}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Comparison":
        """A comparison read back from a manifest (`to_dict`'s output)."""
        names = [f for f in cls.__dataclass_fields__ if f != "extra"]
        return cls(**{k: d[k] for k in names if k in d},
                   extra={k: v for k, v in d.items() if k not in names and k != "ok"})


def compare_arrays(name: str, what: str, a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None,
                   tolerance: float | None = None) -> Comparison:
    """Compare two outputs [..., V] row by row (the rows `where` keeps), in float64, a few rows at a time."""
    if a.shape != b.shape:
        raise ValueError(f"{name}: output shapes differ, {a.shape} vs {b.shape}")
    flat_a, flat_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    keep = np.flatnonzero(np.ones(flat_a.shape[0], bool) if where is None else np.asarray(where).reshape(-1))
    worst, agree, first = 0.0, 0, None
    for start in range(0, len(keep), ROWS):
        ra, rb = flat_a[keep[start:start + ROWS]], flat_b[keep[start:start + ROWS]]
        worst = max(worst, float(np.abs(ra.astype(np.float64) - rb.astype(np.float64)).max(initial=0.0)))
        same = ra.argmax(-1) == rb.argmax(-1)
        agree += int(same.sum())
        if first is None and not same.all():
            first = start + int(np.argmin(same))
    return Comparison(name, what, len(keep), worst, agree / len(keep) if len(keep) else float("nan"), first, tolerance)


def compare_tokens(name: str, what: str, a: Sequence[int], b: Sequence[int]) -> Comparison:
    """Two greedy token sequences: the share of the longer one's positions before the first differing token
    (after it the two runs continue different texts), and that token's position."""
    n = max(len(a), len(b))
    first = next((i for i in range(n) if i >= len(a) or i >= len(b) or a[i] != b[i]), None)
    return Comparison(name, what, n, 0.0, (n if first is None else first) / n if n else 1.0, first)


def combine(name: str, what: str, parts: Iterable[Comparison], tolerance: float | None = None,
            **extra: Any) -> Comparison:
    """One comparison of several inputs: positions summed, the worst difference, pooled agreement, the first
    difference counted in positions from the first input's start."""
    positions, worst, agree, first = 0, 0.0, 0.0, None
    for c in parts:
        if first is None and c.first_difference is not None:
            first = positions + c.first_difference
        agree += c.top1_agreement * c.positions if c.positions else 0.0
        positions += c.positions
        worst = max(worst, c.max_abs_diff)
    return Comparison(name, what, positions, worst, agree / positions if positions else float("nan"), first,
                      tolerance, extra)


def format_comparison(c: Comparison) -> str:
    """One line: what against what, on what; max |diff| (against its tolerance), top-1 agreement, first difference."""
    gate = "" if c.tolerance is None else f" ({'ok' if c.ok else 'FAILS'}: tolerance {c.tolerance:g})"
    first = "none" if c.first_difference is None else f"at position {c.first_difference}"
    return (f"{c.name} on {c.what}: max |diff| {c.max_abs_diff:.3g}{gate}, top-1 agreement {c.top1_agreement:.3f} "
            f"over {c.positions} positions, first difference {first}")
