"""Fixtures shared by the whole suite: the zoo's models (loaded once) and the public data folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository (developers and CI have it; users do not)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public test data not found at {SHARED_DATA} (only developers' and CI machines have it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llava():
    """tiny-random-llava: a real LlavaForConditionalGeneration with seeded random weights."""
    from calib.models import load_model

    return load_model("tiny-random-llava")


@pytest.fixture(scope="session")
def smol_llava():
    """The embedded default (built into the asset cache on first use: about 1.5 minutes)."""
    from calib.models import load_model

    return load_model("smol-llava")


def export_bundle_cli(model: str, out: Path, timeout: int = 900) -> Path:
    """`python -m compile.export --model MODEL --out OUT` in a subprocess (offline), asserting it succeeded."""
    p = subprocess.run([sys.executable, "-m", "compile.export", "--model", model, "--out", str(out)],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, f"compile.export failed:\n{p.stderr[-4000:]}"
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """An fp32 bundle of tiny-random-llava written by `python -m compile.export` (about 40 s, once per session)."""
    return export_bundle_cli("tiny-random-llava", tmp_path_factory.mktemp("bundles") / "tiny-random-llava")


@pytest.fixture(scope="session")
def random_experts():
    """A factory of experts with seeded random AUROCs for a model (hand-made factors: no calibration run), for
    tests of what consumes experts (fold, hooks, export): `random_experts(model, spec=None, seed=1)`."""
    import numpy as np

    from calib.experts import build_experts, model_info, model_units
    from calib.factors import factor_spec

    def make(model, spec=None, seed: int = 1):
        rng = np.random.default_rng(seed)
        units = model_units(model)
        return build_experts(units, {k: rng.random(w) for k, w in units}, spec or factor_spec("sgm"),
                             model_info(model), {"sha256": "0" * 64, "note": "hand-made factors for tests"})

    return make
