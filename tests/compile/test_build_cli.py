"""`python -m compile.build`: documented options, model validation, honest about stages still to come."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runtime.mmtoxicqa.items import CONDITIONS

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compile.build", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_help_documents_the_pipeline():
    p = _run("--help")
    assert p.returncode == 0
    for opt in ("--model", "--out", "--experts", "--method", "--strength", "--precision", "--target", "--dry-run"):
        assert opt in p.stdout
    assert "smol-llava" in p.stdout and "tiny-random-llava" in p.stdout


def test_dry_run_resolves_the_model_and_prints_the_plan():
    p = _run("--model", "tiny-random-llava", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "model: tiny-random-llava (llava," in p.stdout
    for stage in ("calib", "fold", "export", "quantize", "engine", "evaluate"):
        assert stage in p.stdout


def test_unknown_model_and_option_are_refused(tmp_path):
    p = _run("--model", "gpt-17", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "unknown model 'gpt-17'" in p.stderr and "Traceback" not in p.stderr
    p = _run("--model", "smol-llava", "--frobnicate")
    assert p.returncode == 2 and "unrecognized arguments: --frobnicate" in p.stderr
    assert not (tmp_path / "o").exists()


def test_reused_experts_must_be_an_artifact(tmp_path):
    p = _run("--model", "tiny-random-llava", "--experts", str(tmp_path), "--dry-run")
    assert p.returncode == 2 and "not an experts artifact" in p.stderr


def test_fused_settings_that_cannot_work_are_refused_before_any_stage(tmp_path):
    out = tmp_path / "o"
    for args, words in ((("--target", "cuda"), "--fused adds a CPU decoder"),
                        (("--precision", "int8"), "fp32 or int4 decoders, not int8"),
                        (("--builder-python", str(tmp_path / "no-python")), "scripts/setup installs it")):
        p = _run("--model", "tiny-random-llava", "--out", str(out), "--fused", *args)
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not out.exists()
    p = _run("--model", "tiny-random-llava", "--dry-run", "--fused", "--builder-python", sys.executable)
    if p.returncode == 0:  # this interpreter has the builder: the plan lists the stage
        assert "fused" in p.stdout and "runs" in p.stdout.split("fused", 1)[1].splitlines()[0]
    else:
        assert "cannot import" in p.stderr


def test_stage_settings_come_from_the_build_options() -> None:
    """The build hands calib.experts.calibrate and runtime.mmtoxicqa.evaluate typed settings, not command lines."""
    from compile.build import apply_job_defaults, calibration_settings, evaluation_settings, parser

    def parse(*argv: str):
        args = parser().parse_args(argv)
        apply_job_defaults(args)
        return args

    args = parse("--method", "aura", "--limit", "5", "--seed", "3", "--eval-samples", "2", "--allow-small-calibration")
    calib = calibration_settings(args)
    assert (calib.method, calib.limit, calib.seed, calib.allow_small_calibration) == ("aura", 5, 3, True)
    assert (calib.calib, calib.match_lengths) == ("mmtoxicqa", False)
    assert not calib.capped  # aura takes no cap, whatever --top-fraction says
    assert calibration_settings(parse("--calib-limit", "0")).limit is None  # 0 = all
    ev = evaluation_settings(args)
    assert (ev.limit, ev.settings.seed, ev.settings.samples, ev.progress) == (5, 3, 2, False)
    assert ev.conditions == CONDITIONS


def test_gemma_llava_defaults_to_its_regime_and_options_still_win() -> None:
    """gemma-llava's main job calibrates on judged offline texts and evaluates 40 continuation prompts x 10 samples
    (400 toxic-eliciting responses) and the visual questions; an explicit option overrides each default."""
    from compile.build import apply_job_defaults, calibration_settings, evaluation_settings, parser

    args = parser().parse_args(["--model", "gemma-llava"])
    apply_job_defaults(args)
    calib, ev = calibration_settings(args), evaluation_settings(args)
    assert (calib.calib, calib.limit, calib.match_lengths, calib.strength) == ("offline-text", None, True, 2.0)
    assert ev.conditions == ("continuation", "visual") and (ev.limit, ev.settings.samples) == (40, 10)
    assert ev.settings.max_new_tokens == 32
    args = parser().parse_args(["--model", "gemma-llava", "--calib-source", "mmtoxicqa", "--eval-conditions",
                                "standard,continuation", "--eval-samples", "3", "--strength", "1"])
    apply_job_defaults(args)
    assert (calibration_settings(args).calib, calibration_settings(args).strength) == ("mmtoxicqa", 1.0)
    ev = evaluation_settings(args)
    assert ev.conditions == ("standard", "continuation") and ev.settings.samples == 3
