"""The feature probe's classifier (benchmarks/feature_probe.py) separates what is separable and nothing else."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "feature_probe.py"
_spec = importlib.util.spec_from_file_location("feature_probe", _PATH)
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def _data(n: int, informative: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 20, generator=g)
    if informative:
        x[:, :4] += 6.0 * torch.nn.functional.one_hot(y, 4)
    return x, y


def test_probe_reads_a_linearly_coded_label():
    assert probe.fit_probe(*_data(400, True, 0), *_data(200, True, 1), classes=4) > 0.95


def test_probe_is_at_chance_on_noise():
    assert probe.fit_probe(*_data(400, False, 0), *_data(400, False, 1), classes=4) < 0.4
