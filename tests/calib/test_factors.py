"""Factors follow their formulas on hand-made AUROCs."""
from __future__ import annotations

import numpy as np
import pytest

from calib.factors import factor_spec, factors, factors_by_key
from runtime.errors import UserError

A = np.array([0.2, 0.5, 0.55, 0.75, 0.9, 1.0, 0.75], dtype=np.float64)


def test_sgm_default_is_aura_formula() -> None:
    got = factors(A, factor_spec("sgm"))
    np.testing.assert_allclose(got, [1, 1, 0.9, 0.5, 0.2, 0.0, 0.5], atol=1e-6)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, factors(A, factor_spec("aura")))


def test_sgm_strength_threshold_and_clip() -> None:
    got = factors(A, factor_spec("sgm", strength=2.0, threshold=0.6))
    # above 0.6 only; 1 - 2 (2a - 1) clipped at 0
    np.testing.assert_allclose(got, [1, 1, 1, 0.0, 0.0, 0.0, 0.0], atol=1e-6)
    got = factors(A, factor_spec("sgm", strength=0.5))
    np.testing.assert_allclose(got, [1, 1, 0.95, 0.75, 0.6, 0.5, 0.75], atol=1e-6)
    np.testing.assert_array_equal(factors(A, factor_spec("sgm", strength=0.0)), np.ones(7, np.float32))


def test_sgm_top_k_is_global_and_leaves_ties_across_the_cap_out() -> None:
    got = factors(A, factor_spec("sgm", top_k=3))
    # the 3 highest AUROCs above 0.5: 1.0 (idx 5), 0.9 (idx 4), then two tied at 0.75 for one place: neither
    np.testing.assert_allclose(got, [1, 1, 1, 1, 0.2, 0.0, 1], atol=1e-6)
    got = factors(A, factor_spec("sgm", top_k=4))
    np.testing.assert_allclose(got, [1, 1, 1, 0.5, 0.2, 0.0, 0.5], atol=1e-6)
    # top-k cannot select units below the threshold
    got = factors(A, factor_spec("sgm", threshold=0.8, top_k=5))
    np.testing.assert_allclose(got, [1, 1, 1, 1, 0.2, 0.0, 1], atol=1e-6)


def test_det0_and_damp() -> None:
    np.testing.assert_array_equal(factors(A, factor_spec("det0", top_k=2)), [1, 1, 1, 1, 0, 0, 1])
    np.testing.assert_allclose(factors(A, factor_spec("damp", top_k=4, damp_alpha=0.3)),
                               [1, 1, 1, 0.3, 0.3, 0.3, 0.3], atol=1e-6)
    # det0 / damp take the top-k even below 0.5 (no threshold)
    np.testing.assert_array_equal(factors(np.array([0.1, 0.3]), factor_spec("det0", top_k=1)), [1, 0])


def test_by_key_top_k_spans_modules() -> None:
    auroc = {"layers.0.mlp.up_proj": np.array([0.9, 0.6]), "layers.1.mlp.up_proj": np.array([0.95, 0.7, 0.1])}
    got = factors_by_key(auroc, factor_spec("det0", top_k=2))
    np.testing.assert_array_equal(got["layers.0.mlp.up_proj"], [0, 1])
    np.testing.assert_array_equal(got["layers.1.mlp.up_proj"], [0, 1, 1])


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "nope"}, "unknown factor method"),
    ({"method": "aura", "strength": 2.0}, "use method 'sgm'"),
    ({"method": "det0"}, "needs top_k"),
    ({"method": "det0", "top_k": 2, "threshold": 0.6}, "does not take threshold"),
    ({"method": "sgm", "top_k": 0}, "positive integer"),
    ({"method": "sgm", "strength": -1.0}, "strength must be >= 0"),
    ({"method": "sgm", "threshold": 1.0}, r"threshold must be in \[0, 1\)"),
    ({"method": "damp", "top_k": 1, "damp_alpha": 1.5}, "damp_alpha"),
])
def test_bad_specs_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        factor_spec(**kwargs)


def test_bad_aurocs_are_refused() -> None:
    with pytest.raises(UserError, match="exceeds"):
        factors(A, factor_spec("det0", top_k=8))
    with pytest.raises(UserError, match=r"in \[0, 1\]"):
        factors(np.array([0.5, np.nan]), factor_spec())


def test_top_k_for_a_fraction_of_the_units():
    from calib.factors import top_k_for

    assert top_k_for(0.01, 109440) == 1094 and top_k_for(0.01, 10) == 1 and top_k_for(0.0, 100) is None
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        top_k_for(1.0, 100)
