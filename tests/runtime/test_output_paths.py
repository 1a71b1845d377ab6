"""No command writes over a file it reads or over an artifact of another kind (runtime.artifacts.check_output,
shared by every CLI): each case is refused before any work, with the input left as it was."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from runtime import cli
from runtime.artifacts import read_manifest, write_manifest
from runtime.errors import UserError

_spec = importlib.util.spec_from_file_location("bundle_fakes", Path(__file__).resolve().parents[1] / "bundle_fakes.py")
_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fakes)


class FakeJudge:
    name = "fake"
    threshold = 0.5

    def score(self, texts):
        return np.full(len(texts), 0.25)

    def describe(self):
        return {"name": self.name}


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def fake_judge(monkeypatch):
    import runtime.judge

    monkeypatch.setattr(runtime.judge, "load_judge", lambda name, **kw: FakeJudge())


def test_judge_out_equal_to_input_is_refused(tmp_path: Path, fake_judge, capsys) -> None:
    from runtime.judge import main

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"t": "hello"}) + "\n")
    before = src.read_bytes()
    assert main(["--input", str(src), "--field", "t", "--out", str(src), "--no-progress"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and src.read_bytes() == before
    link = tmp_path / "same.jsonl"  # the same file under another name
    link.symlink_to(src)
    assert main(["--input", str(src), "--field", "t", "--out", str(link), "--no-progress"]) == 2
    assert src.read_bytes() == before


def test_judge_validate_out_onto_an_input_is_refused(tmp_path: Path, capsys) -> None:
    from runtime.judge import main

    rtp = tmp_path / "rtp.jsonl"
    rtp.write_text(json.dumps({"prompt": {"text": "x", "toxicity": 0.1}}) + "\n")
    before = rtp.read_bytes()
    assert main(["validate", "--input", str(rtp), "--judge", "fake", "--out", str(rtp)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and rtp.read_bytes() == before


def test_report_out_onto_the_report_it_reads_is_refused(run_dir, capsys) -> None:
    from runtime.report.__main__ import main

    report = run_dir("now", rows=True)
    before = _snapshot(report.parent)
    assert cli.run(main, ["--report", str(report), "--out", str(report)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert cli.run(main, ["--report", str(report.parent), "--out", str(report.parent / "generations.jsonl")]) == 2
    assert _snapshot(report.parent) == before


def test_report_out_onto_another_run_is_refused(run_dir, capsys) -> None:
    from runtime.report.__main__ import main

    report, other = run_dir("now"), run_dir("other")
    before = other.read_bytes()
    assert cli.run(main, ["--report", str(report), "--out", str(other)]) == 2
    assert "'mmtoxicqa-report' file" in capsys.readouterr().err and other.read_bytes() == before


def test_check_json_onto_a_report_is_refused(run_dir, capsys) -> None:
    from runtime.check import main

    now, base = run_dir("now"), run_dir("base")
    snap = now.read_bytes(), base.read_bytes()
    for target in (now, base):
        assert cli.run(main, ["--report", str(now), "--baseline", str(base), "--json", str(target)]) == 2
        assert "--json" in capsys.readouterr().err
    assert (now.read_bytes(), base.read_bytes()) == snap
    verdict = now.parent / "gate.json"  # a verdict file beside the report is fine, and may be replaced
    for _ in range(2):
        assert cli.run(main, ["--report", str(now), "--baseline", str(base), "--json", str(verdict)]) == 0
    assert json.loads(verdict.read_text())["result"] == "pass"


def test_files_of_an_artifact_are_never_an_output(tmp_path: Path) -> None:
    from runtime.artifacts import check_output

    art = tmp_path / "art"
    (art / "sub").mkdir(parents=True)
    (art / "sub" / "w.bin").write_bytes(b"w")
    write_manifest(art, "sgm-experts")
    for rel in ("manifest.json", "sub/w.bin"):
        with pytest.raises(UserError, match="would destroy it"):
            check_output(art / rel, directory=False)
    (art / "notes.txt").write_text("not listed")
    check_output(art / "notes.txt", directory=False)  # a file the manifest does not list is not part of it


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_directory_output_overlapping_an_input_is_refused(tmp_path: Path, where: str) -> None:
    from runtime.artifacts import check_output

    src = _fakes.make_bundle(tmp_path / "b")
    out = {"same": src, "inside": src / "q", "holds": tmp_path}[where]
    with pytest.raises(UserError, match="would overwrite the input"):
        check_output(out, [src], kind="sgm-bundle")


def test_quantize_into_its_own_source_is_refused_before_reading_it(tmp_path: Path) -> None:
    from compile.quantize.derive import derive_bundle

    src = _fakes.make_bundle(tmp_path / "b")
    before = _snapshot(src)
    for out in (src, src / "int4"):
        with pytest.raises(UserError, match="would overwrite the input"):
            derive_bundle(src, out, lambda b, o: pytest.fail("the transform ran"), overwrite=True)
    assert _snapshot(src) == before


def test_experts_overwrite_of_its_own_input_or_another_kind_is_refused(tmp_path: Path, capsys) -> None:
    from calib.experts import main

    bundle = _fakes.make_bundle(tmp_path / "bundle")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    snaps = _snapshot(bundle), _snapshot(foreign)
    for out in (bundle, foreign):
        assert main(["--model", "tiny-random-llava", "--out", str(out), "--overwrite", "--auroc-from", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert "would overwrite the input" in err and "holds other files, not a 'sgm-experts' artifact" in err
    assert main(["--model", "tiny-random-llava", "--out", str(tmp_path / "x"), "--calib", f"rtp:{foreign / 'thesis.tex'}",
                 "--responses", str(bundle / "manifest.json")]) == 2
    assert "--responses" in capsys.readouterr().err
    assert (_snapshot(bundle), _snapshot(foreign)) == snaps


def test_dataset_build_never_replaces_another_artifact(tmp_path: Path, monkeypatch) -> None:
    from runtime.mmtoxicqa import builder

    monkeypatch.setattr(builder, "fill", lambda *a, **k: pytest.fail("the build ran"))
    bundle = _fakes.make_bundle(tmp_path / "bundle")
    with pytest.raises(UserError, match="holds a 'sgm-bundle' artifact, not a 'mmtoxicqa-dataset' one"):
        builder.build_dataset(bundle, overwrite=True)
    read_manifest(bundle)


def test_build_refuses_stages_that_would_replace_its_inputs(tmp_path: Path, capsys) -> None:
    from compile.build import main

    out = tmp_path / "b"
    model, experts = out / "detoxified", out / "experts"
    for d in (model, experts):
        d.mkdir(parents=True)
        write_manifest(d, "sgm-experts" if d == experts else "sgm-detoxified")
    (model / "config.json").write_text('{"model_type": "llava"}')
    for argv in (["--model", str(model)], ["--model", "tiny-random-llava", "--experts", str(tmp_path)]):
        assert cli.run(main, [*argv, "--out", str(out), "--dry-run"]) == 2
        assert "would overwrite the input" in capsys.readouterr().err
    # a previous build's experts under --out are not written when given: fine
    assert cli.run(main, ["--model", "tiny-random-llava", "--experts", str(experts), "--out", str(out),
                          "--dry-run"]) == 0
