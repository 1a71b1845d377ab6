"""compile.fold: the fold reproduces the hook intervention, writes a normal checkpoint, refuses bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compile.fold as fold_mod
from calib.experts import build_experts, model_info, model_units, save_experts
from calib.factors import factor_spec
from calib.models import load_model
from compile.fold import FOLDED_KEY, KIND, check_batch, fold, fold_and_check, fold_to_dir
from runtime.artifacts import read_manifest, sha256_file
from runtime.errors import UserError

CALIB = {"sha256": "0" * 64, "n_samples": 0, "note": "hand-made factors for tests"}
REPO = Path(__file__).resolve().parents[2]


def make_experts(model, out: Path, seed: int = 0, info: dict | None = None) -> Path:
    """An experts artifact with random AUROCs: SGM (strength 1) scales about half the units of every module."""
    rng = np.random.default_rng(seed)
    units = model_units(model)
    auroc = {k: rng.random(w) for k, w in units}
    ex = build_experts(units, auroc, factor_spec("sgm", strength=1.0), info or model_info(model), CALIB)
    assert ex.counts()["totals"]["suppressed_fraction"] > 0.4
    return save_experts(ex, out)


@pytest.fixture(scope="module")
def tiny_experts(tiny_llava, tmp_path_factory) -> Path:
    return make_experts(tiny_llava, tmp_path_factory.mktemp("ex") / "experts")


@pytest.fixture(scope="module")
def folded_tiny(tiny_experts, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fold") / "detoxified"
    return out, fold_to_dir("tiny-random-llava", tiny_experts, out)


def logits_of(model, batch) -> torch.Tensor:
    embeds, mask, pos = batch
    with torch.no_grad():
        return model.decode(embeds, mask, pos)[0][mask.bool()]


def test_fold_scales_rows_and_bias_exactly() -> None:
    lin = torch.nn.Linear(5, 4)
    ref = torch.nn.Linear(5, 4)
    ref.load_state_dict(lin.state_dict())

    class One:  # the smallest model interface fold() needs
        name = "one-linear"

        def mlp_units(self):
            from calib.models.base import MlpUnit

            return [MlpUnit(0, "up_proj", 4)]

        def mlp_linear(self, unit):
            return lin

    s = torch.tensor([1.0, 0.5, 0.0, 0.25])
    fold(One(), {"layers.0.mlp.up_proj": s})
    x = torch.randn(3, 5)
    torch.testing.assert_close(lin(x), ref(x) * s, rtol=0, atol=1e-6)
    torch.testing.assert_close(lin.bias, ref.bias * s)


def test_fold_matches_hooks_and_writes_a_normal_checkpoint(folded_tiny, tiny_experts, tiny_llava) -> None:
    out, manifest = folded_tiny
    f = manifest["fold"]
    assert f["vs_hook"]["max_abs_diff"] <= 1e-5  # tiny fp32 model: rounding only
    assert f["vs_unfolded"]["max_abs_diff"] > 1e-2  # the factors really change the model
    assert f["modules"] == 6 and f["units_scaled"] > 0.4 * sum(w for _, w in model_units(tiny_llava))
    assert manifest["kind"] == KIND
    assert manifest["experts"]["manifest_sha256"] == sha256_file(tiny_experts / "manifest.json")
    assert manifest["source"]["mlp_weights_sha256"] != manifest["model"]["mlp_weights_sha256"]
    read_manifest(out)  # every file listed and matching its sha256
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava"
    assert config[FOLDED_KEY]["experts_manifest_sha256"] == manifest["experts"]["manifest_sha256"]

    # reloaded through the zoo, the folded checkpoint reproduces the hook intervention of the original
    from calib.experts import load_experts
    from calib.intervention import suppress

    original = tiny_llava
    batch = check_batch(original)
    with suppress(original, load_experts(tiny_experts, original)):
        hooked = logits_of(original, batch)
    folded = load_model(str(out))
    assert folded.fingerprint()["mlp_weights_sha256"] == manifest["model"]["mlp_weights_sha256"]
    assert float((logits_of(folded, batch) - hooked).abs().max()) <= 1e-5

    # and transformers loads it as before
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(out)
    assert getattr(hf.config, FOLDED_KEY)["method"]["method"] == "sgm"
    AutoTokenizer.from_pretrained(out)
    AutoImageProcessor.from_pretrained(out)


def test_folding_twice_is_refused_even_from_a_copy(folded_tiny, tiny_experts, tmp_path) -> None:
    out, _ = folded_tiny
    with pytest.raises(UserError, match="already folded"):
        fold_to_dir(str(out), tiny_experts, tmp_path / "twice")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "manifest.json").unlink()  # a copied checkpoint without its manifest is still recognised
    with pytest.raises(UserError, match="already folded"):
        fold_to_dir(str(copy), tiny_experts, tmp_path / "twice")
    assert not (tmp_path / "twice").exists()


def test_experts_of_another_model_are_refused(tiny_llava, tmp_path) -> None:
    model = tiny_llava
    other = make_experts(model, tmp_path / "other", info={**model_info(model), "name": "some-other-llava",
                                                         "mlp_weights_sha256": "f" * 64})
    with pytest.raises(UserError, match="weights mismatch"):
        fold_to_dir("tiny-random-llava", other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_fold_that_drifts_from_the_hooks_is_refused(tiny_experts, tmp_path, monkeypatch) -> None:
    real_fold = fold_mod.fold

    def skips_one_module(model, experts):  # a broken fold: one module's factors never applied
        from calib.intervention import row_scales

        scales = row_scales(experts)
        scales.pop(next(iter(scales)))
        real_fold(model, scales)

    monkeypatch.setattr(fold_mod, "fold", skips_one_module)
    with pytest.raises(UserError, match="differs from the hook intervention"):
        fold_to_dir("tiny-random-llava", tiny_experts, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_existing_output_is_refused_before_any_work(tiny_experts, tmp_path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists"):
        fold_to_dir("tiny-random-llava", tiny_experts, tmp_path / "out")


def test_cli_reports_the_check_and_fails_cleanly(tiny_experts, tmp_path) -> None:
    run = [sys.executable, "-m", "compile.fold", "--model", "tiny-random-llava", "--experts", str(tiny_experts)]
    ok = subprocess.run(run + ["--out", str(tmp_path / "d")], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "fold vs hooks" in ok.stdout and (tmp_path / "d" / "manifest.json").is_file()
    bad = subprocess.run(run + ["--out", str(tmp_path / "d")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "already exists" in bad.stderr


@pytest.mark.slow
def test_fold_matches_hooks_on_smol_llava(smol_llava, tmp_path) -> None:
    """fp32: fold vs hooks within rounding, and the fold as close to the exact intervention as the hooks are.
    fp64: fold and hooks agree to 1e-4 by a wide margin (the algebra is exact; only rounding differs)."""
    from calib.experts import load_experts
    from calib.intervention import suppress
    from compile.fold import _logits

    m = smol_llava
    experts = load_experts(make_experts(m, tmp_path / "experts"), m)
    before = m.fingerprint()
    state = {k: v.clone() for k, v in m.module.state_dict().items()}
    try:
        batch = check_batch(m)
        with suppress(m, experts):
            hooked32 = _logits(m, batch)
        report32 = fold_and_check(m, experts)
        folded32 = _logits(m, batch)
        m.module.load_state_dict(state)
        m.module.double()
        batch64 = check_batch(m)
        with suppress(m, experts):
            exact = _logits(m, batch64).double()
        report64 = fold_and_check(m, experts, tolerance=1e-4)
    finally:
        m.module.float()
        m.module.load_state_dict(state)
    hook_err = float((hooked32.double() - exact).abs().max())
    fold_err = float((folded32.double() - exact).abs().max())
    print(f"fp32 fold vs hooks {report32.vs_hook.max_abs_diff:.3g} (moved {report32.vs_unfolded.max_abs_diff:.3g}, "
          f"{report32.units_scaled} units, {report32.vs_hook.positions} positions); fp64 fold vs hooks "
          f"{report64.vs_hook.max_abs_diff:.3g}; vs exact: hooks32 {hook_err:.3g}, fold32 {fold_err:.3g}")
    assert report32.vs_hook.max_abs_diff <= 1e-3
    assert report32.vs_unfolded.max_abs_diff > 1.0
    assert report64.vs_hook.max_abs_diff <= 1e-5  # measured 1.9e-6 (2^-19: one fp32 step remains in the path)
    assert fold_err <= 2 * hook_err
    assert m.fingerprint() == before  # the shared model is restored
