"""Per-unit AUROC (toxic = positive): how well each MLP unit's pooled activation tells toxic from non-toxic.

Exact with ties: the Mann-Whitney U statistic with average ranks, vectorised over units. Large models do
not fit [samples x units] in RAM (llava-1.5-7b: ~836k units x 2,000 samples = 6.7 GB in float32), so
pooled activations stream into an on-disk `ActivationStore` one sample row at a time and AUROC is computed
in unit chunks, each read back as a [samples x chunk] block; peak memory depends on the chunk, not on
the number of units.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from runtime.errors import UserError

STORE_DTYPES = ("float32", "float16")
DEFAULT_CHUNK_BYTES = 256 << 20
# The fewest toxic and non-toxic samples a calibration set may have for its AUROCs to rank units (docs/factors.md):
# the floor below which the statistic degenerates into ties; the main job's default calibration gives 11 toxic.
MIN_PER_CLASS = 10
MIN_PER_CLASS_REASON = (
    f"scoring needs at least {MIN_PER_CLASS} toxic and {MIN_PER_CLASS} non-toxic samples: with n_pos toxic and "
    "n_neg non-toxic samples an AUROC moves in steps of 1/(n_pos n_neg) and a unit with no signal reaches 1.0 with "
    "probability 1/C(n_pos + n_neg, n_pos): with 1 toxic of 16 one unit in 16 does (thousands of ties at the top of "
    f"a model), with {MIN_PER_CLASS} of each at most one in 184,756, with {MIN_PER_CLASS} of 320 one in 10^18")


def _labels(labels: Sequence[bool] | np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise UserError(f"got {y.shape[0] if y.ndim == 1 else y.shape} labels for {n} samples; "
                        f"give one toxic/non-toxic label per sample")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise UserError("labels must be booleans or 0/1 (1 = toxic); convert scores to labels with a threshold")
        y = y.astype(bool)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == n:
        raise UserError(f"AUROC needs both toxic and non-toxic samples, got {n_pos} toxic of {n}; "
                        f"add samples of the missing class to the calibration set")
    return y


def check_class_counts(n_pos: int, n_neg: int, fix: str) -> None:
    """Refuse a calibration set with fewer than MIN_PER_CLASS toxic or non-toxic samples; `fix` says how to get more."""
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise UserError(f"the calibration set has {n_pos} toxic and {n_neg} non-toxic samples, too few to rank units: "
                        f"{MIN_PER_CLASS_REASON}. {fix}")


def check_possible(n_samples: int, how: str, fix: str) -> None:
    """Refuse, before any sample is labelled, a calibration set too small to hold MIN_PER_CLASS of each class."""
    if n_samples < 2 * MIN_PER_CLASS:
        raise UserError(f"{how} gives at most {n_samples} calibration samples, too few to rank units: "
                        f"{MIN_PER_CLASS_REASON}. {fix}")


def auroc(scores: np.ndarray, labels: Sequence[bool] | np.ndarray) -> np.ndarray:
    """AUROC of every column of `scores` [samples, units] against `labels` (True = toxic), float64 [units].

    Exact with ties: AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg) with R_pos the sum of the
    positives' average ranks, i.e. P(toxic > non-toxic) + P(tie) / 2. Values are compared as float32.
    """
    x = np.asarray(scores)
    if x.ndim != 2:
        raise UserError(f"scores must be [samples, units], got shape {x.shape}")
    y = _labels(labels, x.shape[0])
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise UserError("activations contain NaN or inf; run the model in float32 or check its weights")
    n = x.shape[0]
    n_pos = int(y.sum())
    n_neg = n - n_pos
    # Units on rows: numpy sorts the last axis fastest. +0.0 turns -0.0 into +0.0 so they tie.
    xt = np.ascontiguousarray(x.T) + np.float32(0.0)
    order = np.argsort(xt, axis=1)
    v = np.take_along_axis(xt, order, axis=1)
    del xt
    pos = y[order]
    del order
    idx = np.arange(n, dtype=np.int32)
    new = np.ones(v.shape, dtype=bool)
    np.not_equal(v[:, 1:], v[:, :-1], out=new[:, 1:])
    del v
    first = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
    end = np.ones_like(new)
    end[:, :-1] = new[:, 1:]
    del new
    last = np.minimum.accumulate(np.where(end, idx, n - 1)[:, ::-1], axis=1)[:, ::-1]
    del end
    # Twice the rank sum of the positives, in exact integers: average rank = (first + last) / 2 + 1.
    twice_r = (np.where(pos, first.astype(np.int64) + last + 2, 0)).sum(axis=1)
    return (twice_r - n_pos * (n_pos + 1)) / (2.0 * n_pos * n_neg)


def tail_stats(aurocs: np.ndarray, top_fraction: float) -> dict[str, float | int]:
    """The upper tail of a vector of AUROCs: its max, the AUROC at the top `top_fraction` of units, and the
    number of units above 0.6 and 0.7 (what ActivationStore.permutation_null compares with shuffled labels)."""
    flat = np.asarray(aurocs).ravel()
    k = max(1, round(top_fraction * flat.size))
    return {"max": float(flat.max()), "top_threshold": float(np.partition(flat, -k)[-k]),
            "above_0.6": int((flat > 0.6).sum()), "above_0.7": int((flat > 0.7).sum())}


class ActivationStore:
    """An append-only on-disk matrix [samples x units] of pooled activations, with one label per sample.

    Rows are written with plain file writes (no memory map, so nothing accumulates in the process), then
    `auroc` reads the columns back in chunks sized by `chunk_bytes`. Units are the concatenation of
    `units` (key, width) in order; `split` cuts a flat per-unit vector back into per-key vectors.
    """

    def __init__(self, path: str | os.PathLike, units: Sequence[tuple[str, int]], dtype: str = "float32",
                 expected_samples: int | None = None) -> None:
        if dtype not in STORE_DTYPES:
            raise UserError(f"activation store dtype {dtype!r} is not supported; use one of {STORE_DTYPES}")
        self.units = [(str(k), int(w)) for k, w in units]
        if not self.units or any(w <= 0 for _, w in self.units):
            raise UserError("the activation store needs at least one unit group with a positive width")
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.n_units = sum(w for _, w in self.units)
        self.row_bytes = self.n_units * self.dtype.itemsize
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if expected_samples:
            need = expected_samples * self.row_bytes
            free = shutil.disk_usage(self.path.parent).free
            if need > free:
                raise UserError(f"the activation store needs {need / 2**30:.1f} GiB in {self.path.parent} but only "
                                f"{free / 2**30:.1f} GiB are free; choose another work directory or store float16")
        self._file = open(self.path, "wb")
        self._labels: list[bool] = []

    @property
    def n_samples(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return np.array(self._labels, dtype=bool)

    def append(self, rows: np.ndarray, labels: Sequence[bool] | np.ndarray) -> None:
        """Append pooled activations [batch, n_units] and their labels (True = toxic)."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.n_units:
            raise UserError(f"activation rows must be [batch, {self.n_units}], got {rows.shape}")
        labels = np.asarray(labels, dtype=bool).reshape(-1)
        if labels.shape[0] != rows.shape[0]:
            raise UserError(f"{rows.shape[0]} activation rows but {labels.shape[0]} labels; give one label per row")
        if not np.isfinite(rows).all():
            raise UserError("pooled activations contain NaN or inf; run the model in float32 or check its weights")
        with np.errstate(over="ignore"):
            out = rows.astype(self.dtype, copy=False)
        if not np.isfinite(out).all():
            raise UserError("pooled activations overflow float16; store them as float32")
        self._file.write(np.ascontiguousarray(out).tobytes())
        self._labels.extend(bool(b) for b in labels)

    def _flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def columns(self, start: int, stop: int) -> np.ndarray:
        """Units [start, stop) of every sample: [samples, stop - start], read row by row from disk."""
        self._flush()
        width = stop - start
        out = np.empty((self.n_samples, width), dtype=self.dtype)
        nbytes = width * self.dtype.itemsize
        with open(self.path, "rb", buffering=0) as f:
            for i in range(self.n_samples):
                f.seek(i * self.row_bytes + start * self.dtype.itemsize)
                if f.readinto(memoryview(out[i]).cast("B")) != nbytes:
                    raise UserError(f"{self.path} is shorter than expected; it was truncated, collect again")
        return out

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[int, int]]:
        """Unit ranges [start, stop) whose AUROC working set fits in about `chunk_bytes`."""
        # auroc() holds ~ 40 bytes per (sample, unit) at its peak (float32 copies, int32/int64 indices, masks).
        per_unit = max(self.n_samples, 1) * 40
        step = max(1, chunk_bytes // per_unit)
        for start in range(0, self.n_units, step):
            yield start, min(start + step, self.n_units)

    def auroc(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: bool = False,
              labels: Sequence[bool] | np.ndarray | None = None) -> np.ndarray:
        """AUROC of every unit, float64 [n_units], computed chunk by chunk from disk (against `labels` when
        given, e.g. permuted ones for a null distribution; the stored labels otherwise)."""
        self._flush()
        y = _labels(self._labels if labels is None else labels, self.n_samples)
        out = np.empty(self.n_units, dtype=np.float64)
        ranges = list(self.chunks(chunk_bytes))
        if progress:
            from tqdm import tqdm
            ranges = tqdm(ranges, desc="AUROC", unit="chunk")
        for start, stop in ranges:
            out[start:stop] = auroc(self.columns(start, stop), y)
        return out

    def permutation_null(self, permutations: int, seed: int = 0, top_fraction: float = 0.01,
                         chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict[str, Any]:
        """How high AUROCs go when labels carry no information: the stored labels shuffled `permutations` times.

        Units share samples, so their AUROCs are correlated and an independent-units null is too narrow; this
        keeps the correlation. Returns, per permutation, the max AUROC, the AUROC at the top `top_fraction`
        of units, and the number of units above 0.6 / 0.7 (to set against the same figures of the real labels).
        """
        if permutations < 1:
            raise UserError(f"permutations must be >= 1, got {permutations}")
        rng = np.random.default_rng(seed)
        out: dict[str, Any] = {"permutations": permutations, "seed": seed, "top_fraction": top_fraction}
        for _ in range(permutations):
            stats = tail_stats(self.auroc(chunk_bytes, labels=rng.permutation(self.labels)), top_fraction)
            for key, value in stats.items():
                out.setdefault(key, []).append(value)
        return out

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Cut a flat [n_units] vector into {key: [width]} in the store's unit order."""
        flat = np.asarray(flat)
        if flat.shape != (self.n_units,):
            raise UserError(f"expected a vector of {self.n_units} units, got shape {flat.shape}")
        out, start = {}, 0
        for key, width in self.units:
            out[key] = flat[start:start + width]
            start += width
        return out

    def delete(self) -> None:
        """Close and remove the backing file."""
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "ActivationStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
