"""AUROC: exact with ties, against a brute-force pairwise count (and scikit-learn when installed)."""
from __future__ import annotations

import numpy as np
import pytest

from calib.scoring import ActivationStore, auroc, tail_stats
from runtime.errors import UserError


def pairwise_auroc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(toxic > non-toxic) + P(tie) / 2 by comparing every toxic sample with every non-toxic one."""
    pos, neg = x[y][:, None, :], x[~y][None, :, :]
    return ((pos > neg).sum((0, 1)) + 0.5 * (pos == neg).sum((0, 1))) / (pos.shape[0] * neg.shape[1])


def tied_data(seed: int, n: int = 61, units: int = 37) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(n, units)).astype(np.float32)  # few distinct values: many ties
    x[:, :5] = rng.standard_normal((n, 5))                          # some columns without ties
    x[:, 5] = 1.0                                                   # a constant unit
    x[:, 6] = np.where(rng.random(n) < 0.5, 0.0, -0.0)              # -0.0 and +0.0 must tie
    y = rng.random(n) < 0.4
    return x, y


@pytest.mark.parametrize("seed", range(5))
def test_matches_pairwise_with_ties(seed: int) -> None:
    x, y = tied_data(seed)
    got = auroc(x, y)
    np.testing.assert_allclose(got, pairwise_auroc(x, y), rtol=0, atol=1e-12)
    assert got[5] == 0.5 and got[6] == 0.5


def test_matches_sklearn_if_installed() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    x, y = tied_data(7)
    expected = [metrics.roc_auc_score(y, x[:, j]) for j in range(x.shape[1])]
    np.testing.assert_allclose(auroc(x, y), expected, rtol=0, atol=1e-12)


def test_separating_units() -> None:
    y = np.array([0, 0, 0, 1, 1], dtype=bool)
    x = np.stack([y.astype(np.float32), -y.astype(np.float32), np.array([1, 2, 3, 3, 5], np.float32)], axis=1)
    # third unit: toxic {3, 5} vs non-toxic {1, 2, 3}: 5 wins + one tie of 6 pairs -> 5.5 / 6
    np.testing.assert_allclose(auroc(x, y), [1.0, 0.0, 5.5 / 6], atol=1e-12)


def test_bad_input_is_refused() -> None:
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(UserError, match="both toxic and non-toxic"):
        auroc(x, [True] * 4)
    with pytest.raises(UserError, match="one toxic/non-toxic label per sample"):
        auroc(x, [True, False])
    x[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        auroc(x, [True, False, True, False])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_store_streams_in_chunks(tmp_path, dtype: str) -> None:
    units = [("layers.0.mlp.gate_proj", 11), ("layers.0.mlp.down_proj", 5), ("layers.1.mlp.up_proj", 21)]
    x, y = tied_data(3, n=50, units=37)
    x[:, 10:] += np.random.default_rng(1).standard_normal((50, 27)).astype(np.float32) * 0.001
    with ActivationStore(tmp_path / "acts.bin", units, dtype=dtype) as store:
        for start in range(0, 50, 7):
            store.append(x[start:start + 7], y[start:start + 7])
        assert store.n_samples == 50
        assert len(list(store.chunks(chunk_bytes=50 * 40 * 4))) == 10  # 4 units per chunk
        got = store.auroc(chunk_bytes=50 * 40 * 4)
    stored = x.astype(dtype)  # the store compares the values it keeps
    np.testing.assert_allclose(got, pairwise_auroc(stored.astype(np.float32), y), atol=1e-12)
    parts = store.split(got)
    assert [k for k in parts] == [k for k, _ in units]
    np.testing.assert_array_equal(parts["layers.1.mlp.up_proj"], got[16:])
    assert (tmp_path / "acts.bin").stat().st_size == 50 * 37 * np.dtype(dtype).itemsize
    store.delete()
    assert not (tmp_path / "acts.bin").exists()


def test_store_refuses_bad_rows(tmp_path) -> None:
    store = ActivationStore(tmp_path / "a.bin", [("k", 3)])
    with pytest.raises(UserError, match=r"\[batch, 3\]"):
        store.append(np.zeros((2, 4)), [True, False])
    with pytest.raises(UserError, match="one label per row"):
        store.append(np.zeros((2, 3)), [True])
    with pytest.raises(UserError, match="overflow float16"):
        ActivationStore(tmp_path / "b.bin", [("k", 1)], dtype="float16").append(np.array([[1e6]]), [True])
    with pytest.raises(UserError, match="GiB"):
        ActivationStore(tmp_path / "c.bin", [("k", 1 << 30)], expected_samples=1 << 20)
    store.close()


def test_permutation_null_keeps_noise_units_below_a_real_expert(tmp_path) -> None:
    rng = np.random.default_rng(3)
    labels = np.arange(120) < 30
    rows = rng.normal(size=(120, 400)).astype(np.float32)
    rows[:, 7] += 1.5 * labels  # one real expert among noise units
    with ActivationStore(tmp_path / "acts.bin", [("k", 400)]) as store:
        store.append(rows, labels)
        real = store.auroc()
        null = store.permutation_null(5, seed=1, top_fraction=0.01)
        assert null == store.permutation_null(5, seed=1, top_fraction=0.01)  # seeded
        assert store.labels.tolist() == labels.tolist()  # the stored labels are untouched
    assert len(null["max"]) == len(null["top_threshold"]) == 5 and null["top_fraction"] == 0.01
    assert real[7] > 0.8 and max(null["max"]) < real[7]
    real_tail = tail_stats(real, 0.01)
    assert real_tail["max"] == real.max() and real_tail["top_threshold"] == np.sort(real)[-4]  # top 4 of 400
    assert all(0.5 < t <= m < 0.8 for t, m in zip(null["top_threshold"], null["max"]))
    assert all(n >= 0 for n in null["above_0.7"])
    with pytest.raises(UserError, match="permutations must be >= 1"):
        ActivationStore(tmp_path / "b.bin", [("k", 1)]).permutation_null(0)
