"""compile.build adds the fused CPU decoder by default (fp32, int4) and `--no-fused` gives the bundle without it.

On tiny-random-gemma-llava (head size 32, which GroupQueryAttention takes), with hand-made experts and no
evaluation: the fold and export stages, then the fused stage, in seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from compile.build import BUILD_FILE, fused_wanted, main, parser
from runtime.bundle import load_bundle


@pytest.mark.parametrize("argv, wanted", [
    ([], True), (["--precision", "int4"], True), (["--no-fused"], False), (["--precision", "int4", "--no-fused"], False),
    (["--precision", "int8"], False), (["--precision", "fp16"], False), (["--target", "cuda"], False),
    (["--target", "jetson-orin"], False), (["--fused"], True)])
def test_the_fused_stage_is_the_default_on_cpu_for_fp32_and_int4(argv, wanted):
    assert fused_wanted(parser().parse_args(argv)) is wanted


@pytest.fixture(scope="module")
def gemma_experts(random_experts, tmp_path_factory) -> tuple[str, Path]:
    from calib.experts import save_experts
    from calib.models import load_model
    from calib.models.tiny_gemma import tiny_gemma_llava_dir

    model = str(tiny_gemma_llava_dir())
    return model, save_experts(random_experts(load_model(model)), tmp_path_factory.mktemp("ex") / "experts")


def test_no_fused_gives_the_standard_bundle_and_the_default_adds_the_fused_one(gemma_experts, tmp_path, capsys):
    model, experts = gemma_experts
    out = tmp_path / "out"
    common = ["--model", model, "--experts", str(experts), "--out", str(out), "--skip-eval"]
    assert main([*common, "--no-fused"]) == 0
    record = json.loads((out / BUILD_FILE).read_text())
    assert set(record["stages"]) == {"fold", "export"} and not (out / "bundle-fused").exists()
    plain = load_bundle(out / "bundle")
    assert plain.spec.fused_decoder is None  # today's bundle: the standard decoder only
    before = (out / "bundle" / "manifest.json").read_bytes()

    assert main(common) == 0  # the default: the same stages reused, the fused decoder added
    err = capsys.readouterr().err
    record = json.loads((out / BUILD_FILE).read_text())
    assert set(record["stages"]) == {"fold", "export", "fused"} and "[export] reusing" in err
    assert (out / "bundle" / "manifest.json").read_bytes() == before
    fused = load_bundle(out / "bundle-fused")
    assert fused.spec.fused_decoder is not None and fused.spec.graphs == plain.spec.graphs
    check = json.loads((out / "bundle-fused" / "manifest.json").read_text())["check"]
    assert check["identical_greedy"] == check["prompts"] and check["max_abs_dlogit_prefill"] < 1e-2


def test_the_default_skips_a_model_it_cannot_fuse_and_says_why(tiny_bundle, tmp_path, capsys):
    """tiny-random-llava's head size (8) is below GroupQueryAttention's multiple of 16: the build goes on with the
    standard decoder by default, and an explicit --fused is an error."""
    from compile.build import Build, fused_stage
    from runtime.errors import UserError

    build = Build(tmp_path / "out")
    assert fused_stage(build, parser().parse_args([]), tiny_bundle, tmp_path / "unused") == tiny_bundle
    assert "[fused] skipped: ONNX Runtime's GroupQueryAttention" in capsys.readouterr().err
    with pytest.raises(UserError, match="multiple of 16"):
        fused_stage(build, parser().parse_args(["--fused"]), tiny_bundle, tmp_path / "unused")
    assert not (tmp_path / "out" / f"{tiny_bundle.name}-fused").exists()
