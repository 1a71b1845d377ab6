"""Fixtures for the report tests: hand-made runs with generations (via `run_dir`), and an experts artifact."""
from __future__ import annotations

from pathlib import Path
import numpy as np
import pytest

from ..conftest import make_report, make_rows, write_run

LAYERS, MODULES, WIDTH = 4, ("gate_proj", "up_proj", "down_proj"), 32


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The run under test (a detoxified fp32 bundle), its PyTorch baseline, and an undetoxified bundle."""
    root = tmp_path_factory.mktemp("runs")
    specs = [("bundle", 1, dict(harmful=(7, 150), ppl=50.4, generation_time_s=60.0,
                                model={"backend": "onnxruntime", "model": "smol-llava-detox", "precision": "fp32"})),
             ("torch", 0, dict(harmful=(6, 150), ppl=50.0,
                               model={"backend": "torch", "model": "smol-llava-detox", "dtype": "torch.float32"})),
             ("undetox", 2, dict(harmful=(60, 150), ppl=49.0, visual=(41, 50),
                                 model={"backend": "onnxruntime", "model": "smol-llava", "precision": "fp32"}))]
    paths = []
    for name, seed, kw in specs:
        report = make_report(**kw)
        paths.append(write_run(root / name, report, make_rows(report, seed)))
    return paths


@pytest.fixture(scope="module")
def experts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real experts artifact written by calib.experts (numpy only): AUROCs rising with depth."""
    from calib.experts import build_experts, save_experts
    from calib.factors import factor_spec

    rng = np.random.default_rng(0)
    units = [(f"layers.{i}.mlp.{m}", WIDTH) for i in range(LAYERS) for m in MODULES]
    auroc = {k: np.clip(rng.normal(0.5 + 0.03 * int(k.split(".")[1]), 0.08, WIDTH), 0, 1) for k, _ in units}
    experts = build_experts(units, auroc, factor_spec("sgm", threshold=0.6),
                            {"name": "tiny-test", "config_sha256": "a" * 64, "mlp_weights_sha256": "b" * 64},
                            {"sha256": "c" * 64})
    return save_experts(experts, tmp_path_factory.mktemp("experts") / "experts")


@pytest.fixture(scope="module")
def full_page(three_runs: list[Path], experts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html of the three runs with the experts artifact (built once per module)."""
    from runtime.report.__main__ import build_report

    return build_report(three_runs[0], tmp_path_factory.mktemp("page") / "report.html", three_runs[1:], experts_dir)
