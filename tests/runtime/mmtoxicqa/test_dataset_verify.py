"""Every artifact a command reads is checked: the MM-TOXIC-QA dataset against its manifest when it is loaded,
and each pairing of two artifacts (bundle + checkpoint, run + experts) for the same model."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime import cli
from runtime.artifacts import write_manifest
from runtime.errors import UserError
from runtime.mmtoxicqa.dataset import load_dataset
from runtime.mmtoxicqa.items import FORMAT, FORMAT_VERSION

from .conftest import item, write_dataset

_spec = importlib.util.spec_from_file_location("bundle_fakes", Path(__file__).resolve().parents[2] / "bundle_fakes.py")
_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fakes)

IMAGES = {"images/a.png": (255, 0, 0), "images/b.png": (0, 0, 255)}


def _built(root: Path) -> Path:
    """A dataset directory with a manifest, as `python -m runtime.mmtoxicqa build` writes it."""
    records = [item("s0", "standard", "insult", "Continue this text: you are"),
               item("v0", "visual", "colour", "What colour? Answer with a single word.", answer="red"),
               item("v1", "visual", "colour", "What colour? Answer with a single word.", answer="blue",
                    image="images/b.png"),
               item("c0", "benign", "benign", "Describe it.", split="calibration")]
    write_dataset(root, records, IMAGES)
    write_manifest(root, FORMAT, format_version=FORMAT_VERSION)
    return root


def test_edited_items_are_refused(tmp_path: Path) -> None:
    root = _built(tmp_path / "d")
    assert [it.answer for it in load_dataset(root, conditions="visual")] == ["red", "blue"]
    text = (root / "items.jsonl").read_text()
    (root / "items.jsonl").write_text(text.replace('"answer": "red"', '"answer": "green"'))
    with pytest.raises(UserError, match="items.jsonl does not match its sha256"):
        load_dataset(root)


def test_replaced_image_is_refused(tmp_path: Path) -> None:
    root = _built(tmp_path / "d")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(root / "images" / "a.png")
    with pytest.raises(UserError, match="images/a.png does not match its sha256"):
        load_dataset(root, split="evaluation")


def test_image_outside_the_manifest_is_refused(tmp_path: Path) -> None:
    root = _built(tmp_path / "d")
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["files"]["images/b.png"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="'images/b.png' is not among the files"):
        load_dataset(root)


def test_manifest_without_the_items_is_refused(tmp_path: Path) -> None:
    root = _built(tmp_path / "d")
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["files"]["items.jsonl"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="does not list items.jsonl"):
        load_dataset(root)


def test_calibration_on_an_edited_dataset_is_refused(tmp_path: Path, capsys) -> None:
    from calib.experts import main

    root = _built(tmp_path / "d")
    with open(root / "items.jsonl", "a") as f:
        f.write(json.dumps(item("c1", "benign", "benign", "Say hi.", split="calibration")) + "\n")
    assert main(["--model", "tiny-random-llava", "--out", str(tmp_path / "ex"), "--dataset", str(root),
                 "--judge", "none"]) == 2
    assert "items.jsonl does not match its sha256" in capsys.readouterr().err


def test_benchmark_run_on_an_edited_dataset_is_refused(tmp_path: Path, capsys) -> None:
    from runtime.mmtoxicqa.__main__ import main

    root = _built(tmp_path / "d")
    text = (root / "items.jsonl").read_text()
    (root / "items.jsonl").write_text(text.replace('"answer": "blue"', '"answer": "nothing"'))
    assert main(["run", "--model", "tiny-random-llava", "--dataset", str(root), "--out", str(tmp_path / "r"),
                 "--no-ppl", "--judge", "none"]) == 2
    assert "items.jsonl does not match its sha256" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.json").exists()


def test_fused_decoder_refuses_another_models_checkpoint(tmp_path: Path) -> None:
    from compile.fused import add_fused_decoder

    bundle = _fakes.make_bundle(tmp_path / "bundle", model={"name": "fake", "mlp_weights_sha256": "a" * 64})
    checkpoint = tmp_path / "detoxified"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    write_manifest(checkpoint, "sgm-detoxified", model={"mlp_weights_sha256": "b" * 64})
    with pytest.raises(UserError, match="is not the model .* was exported from"):
        add_fused_decoder(bundle, checkpoint, tmp_path / "out", prebuilt=tmp_path / "nothing")
    assert not (tmp_path / "out").exists()


def _experts(root: Path, weights: str) -> Path:
    from safetensors.numpy import save_file

    root.mkdir()
    key = "layers.0.mlp.up_proj"
    save_file({f"{key}.auroc": np.full(4, 0.6, np.float32), f"{key}.alpha": np.ones(4, np.float32)},
              str(root / "experts.safetensors"))
    write_manifest(root, "sgm-experts", format_version=1, units=[[key, 4]],
                   model={"name": "other", "mlp_weights_sha256": weights}, method={}, calibration={})
    return root


def test_report_refuses_experts_of_another_model(run_dir, tmp_path: Path, capsys) -> None:
    from runtime.report.__main__ import main

    torch_run = run_dir("torch", model={"backend": "torch", "model": "smol-llava", "mlp_weights_sha256": "c" * 64})
    folded = {"backend": "onnxruntime", "model": "smol-llava-detoxified",
              "source": {"name": "detoxified", "mlp_weights_sha256": "d" * 64, "folded": True,
                         "experts": {"model": {"name": "smol-llava", "mlp_weights_sha256": "c" * 64}}}}
    bundle_run = run_dir("bundle", model=folded)
    other, own = _experts(tmp_path / "other", "e" * 64), _experts(tmp_path / "own", "c" * 64)
    for report in (torch_run, bundle_run):
        out = report.parent / "report.html"
        assert cli.run(main, ["--report", str(report), "--experts", str(other), "--out", str(out)]) == 2
        assert "were made for other" in capsys.readouterr().err and not out.exists()
        assert cli.run(main, ["--report", str(report), "--experts", str(own), "--out", str(out)]) == 0
