"""`run --dataset` with a user's own sets: parsing the value, loading each format, the CLI end to end with fakes,
and exit code 2 with the file and line for bad input (no model is loaded then)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.errors import UserError
from runtime.mmtoxicqa import __main__ as cli
from runtime.mmtoxicqa import evaluate
from runtime.mmtoxicqa.spec import DatasetSpec, load_spec, parse_dataset

from .conftest import CannedGenerator, KeywordJudge
from .test_external import RTP_LINE, _figstep, _mmsb

CONDITIONS = ("standard", "jailbreak", "typographic", "continuation", "benign", "visual")


def _rtp(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "mine.jsonl"
    lines = [{**RTP_LINE, "begin": i, "prompt": {**RTP_LINE["prompt"], "text": f"prompt number {i}"}}
             for i in range(n)]
    path.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    return path


def test_parse_dataset(tmp_path):
    assert parse_dataset(None) == DatasetSpec(None, None)
    assert parse_dataset(str(tmp_path)) == DatasetSpec(None, tmp_path)
    assert parse_dataset("rtp:x.jsonl") == DatasetSpec("rtp", Path("x.jsonl"))
    assert parse_dataset("rtp-continuation:x.jsonl") == DatasetSpec("rtp-continuation", Path("x.jsonl"))
    assert parse_dataset("MMSafetyBench:/d") == DatasetSpec("mmsafetybench", Path("/d"))
    assert parse_dataset("figstep:a.csv") == DatasetSpec("figstep", Path("a.csv"))
    assert parse_dataset("figstep:a.csv:imgs") == DatasetSpec("figstep", Path("a.csv"), Path("imgs"))
    odd = tmp_path / "a:b"  # a ':' inside the CSV's path: split after the part that is a file
    odd.mkdir()
    (odd / "t.csv").write_text("x\n")
    assert parse_dataset(f"figstep:{odd}/t.csv:{odd}") == DatasetSpec("figstep", odd / "t.csv", odd)
    assert parse_dataset(f"figstep:{odd}/t.csv") == DatasetSpec("figstep", odd / "t.csv")
    assert str(parse_dataset("figstep:a.csv:imgs")) == "figstep:a.csv:imgs"


@pytest.mark.parametrize("value,message", [
    ("foo:x", "unknown scheme 'foo'; use rtp:FILE.jsonl, rtp-continuation:FILE.jsonl, figstep:CSV[:IMAGES], mmsafetybench:DIR"),
    ("rtp:", "--dataset rtp: names no path; use rtp:FILE.jsonl"),
    ("figstep:a.csv:", "empty image folder"),
])
def test_parse_dataset_refuses(value, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_dataset(value)


def test_a_bare_file_gets_the_scheme_to_use(tmp_path):
    path = _rtp(tmp_path)
    with pytest.raises(UserError, match=f"is a file; name its format, e.g. rtp:{path}"):
        parse_dataset(str(path))


def test_load_spec_of_each_format(tmp_path):
    items, info = load_spec(parse_dataset(f"rtp:{_rtp(tmp_path)}"), "evaluation", CONDITIONS)
    assert [it.prompt for it in items] == [f"Continue this text: prompt number {i}" for i in range(3)]
    assert info["scheme"] == "rtp" and len(info["file_sha256"]) == 64 and len(info["items_sha256"]) == 64
    root = _figstep(tmp_path)
    (item,), info = load_spec(parse_dataset(f"figstep:{root}/tiny.csv:{root}/imgs"), "evaluation", CONDITIONS)
    assert item.condition == "typographic" and item.image_path().is_file() and info["images"] == str(root / "imgs")
    items, info = load_spec(parse_dataset(f"mmsafetybench:{_mmsb(tmp_path)}"), "evaluation", ("typographic",))
    assert len(items) == 4 and {it.condition for it in items} == {"typographic"} and "file_sha256" not in info


def test_load_spec_refuses_other_splits_and_absent_conditions(tmp_path):
    spec = parse_dataset(f"rtp:{_rtp(tmp_path)}")
    with pytest.raises(UserError, match="holds evaluation items only"):
        load_spec(spec, "calibration", CONDITIONS)
    with pytest.raises(UserError, match="holds only condition\\(s\\) standard; --conditions jailbreak selects none"):
        load_spec(spec, "evaluation", ("jailbreak",))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="holds no items"):
        load_spec(parse_dataset(f"rtp:{tmp_path / 'empty.jsonl'}"), "evaluation", CONDITIONS)


@pytest.fixture
def fakes(monkeypatch):
    """The CLI with a canned model (prompt 0 answers: calm, "you idiot", calm) and the keyword judge."""
    gen = CannedGenerator({"Continue this text: prompt number 0": ["calm", "you idiot", "fine"]}, default="calm")
    monkeypatch.setattr(evaluate, "load_model", lambda name: gen)
    monkeypatch.setattr(evaluate, "load_judge", lambda name: KeywordJudge())
    return gen


def test_run_on_rtp_with_k_samples(tmp_path, fakes, capsys):
    out = tmp_path / "run"
    argv = ["run", "--model", "m", "--dataset", f"rtp:{_rtp(tmp_path, 4)}", "--limit", "2", "--samples", "3",
            "--out", str(out), "--no-ppl", "--no-progress"]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_items_by_condition"] == {"standard": 2} and report["k"] == 3
    assert report["harmful_rate"] == {"rate": 1 / 6, "hits": 1, "total": 6, "n": 2, "k": 3, "any_rate": 0.5,
                                      "any_hits": 1}
    overall = report["rtp_metrics"]["overall"]  # maxima 0.9 (prompt 0) and 0.1 (prompt 1)
    assert overall["expected_max_toxicity"]["value"] == pytest.approx(0.5)
    assert overall["toxicity_probability"]["hits"] == 1 and overall["k"] == 3
    dataset = report["dataset"]
    assert dataset["scheme"] == "rtp" and dataset["limit"] == 2 and dataset["split"] == "evaluation"
    assert report["settings"]["samples"] == 3 and len(fakes.prompts) == 6
    printed = capsys.readouterr().out
    assert "harmful rate 0.16666666666666666 (1/6)" in printed
    assert "toxic-eliciting prompts: expected max toxicity 0.500 [" in printed
    assert "toxicity probability 50.0% [9.5, 90.5] (1/2 prompts, k=3)" in printed


def test_run_on_figstep_images(tmp_path, fakes):
    root = _figstep(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["run", "--model", "m", "--dataset", f"figstep:{root}/tiny.csv:{root}/imgs", "--out", str(out),
                     "--no-ppl", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_items_by_condition"] == {"typographic": 1}
    assert fakes.images[0] is not None and fakes.images[0].size == (8, 8)


def _bad_rtp(tmp_path: Path, second_line: str) -> str:
    path = _rtp(tmp_path, 1)
    path.write_text(path.read_text() + second_line + "\n")
    return f"rtp:{path}"


@pytest.mark.parametrize("make,message", [
    (lambda t: _bad_rtp(t, "{not json"), "mine.jsonl line 2 is not valid JSON"),
    (lambda t: _bad_rtp(t, json.dumps({"prompt": {"toxicity": 0.9}})), "mine.jsonl line 2 has no prompt.text"),
    (lambda t: _bad_rtp(t, json.dumps({"prompt": {"text": "  "}})), "mine.jsonl line 2 has an empty prompt.text"),
    (lambda t: f"rtp:{t / 'absent.jsonl'}", "absent.jsonl does not exist"),
    (lambda t: f"rtp:{t}", "is a directory; pass a RealToxicityPrompts JSONL file"),
    (lambda t: "foo:x", "unknown scheme 'foo'"),
    (lambda t: f"figstep:{_figstep(t, with_image=False)}/tiny.csv:{t}/figstep/imgs",
     "tiny.csv line 2: image query_ForbidQI_1_2_6.png is missing"),
    (lambda t: f"figstep:{_figstep(t)}/tiny.csv:{t}/nowhere", "FigStep image directory"),
    (lambda t: f"mmsafetybench:{t / 'absent'}", "MM-SafetyBench root"),
])
def test_bad_user_sets_exit_2_before_loading_the_model(tmp_path, monkeypatch, capsys, make, message):
    monkeypatch.setattr(evaluate, "load_model", lambda name: pytest.fail("the model must not load on bad input"))
    value = make(tmp_path)
    assert cli.main(["run", "--model", "m", "--dataset", value, "--out", str(tmp_path / "r"), "--no-ppl",
                     "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_figstep_csv_errors_name_the_line(tmp_path):
    from runtime.mmtoxicqa.external import load_figstep

    root = _figstep(tmp_path)
    text = (root / "tiny.csv").read_text()
    (root / "dup.csv").write_text(text + text.splitlines()[1] + "\n")
    with pytest.raises(UserError, match="dup.csv line 3 repeats dataset, category_id and task_id ForbidQI_1_2 of "
                                        "line 2"):
        load_figstep(root / "dup.csv")
    (root / "short.csv").write_text(text + "ForbidQI,1,3,Illegal Activity\n")
    with pytest.raises(UserError, match="short.csv line 3 has no question"):
        load_figstep(root / "short.csv")
    (root / "latin.csv").write_bytes(text.encode() + b"ForbidQI,1,4,Illegal,caf\xe9?,x\n")
    with pytest.raises(UserError, match="latin.csv is not UTF-8"):
        load_figstep(root / "latin.csv")


def test_rtp_not_utf8_names_the_line(tmp_path):
    from runtime.mmtoxicqa.external import load_rtp_jsonl

    path = _rtp(tmp_path, 2)
    path.write_bytes(path.read_bytes() + b'{"prompt": {"text": "caf\xe9"}}\n')
    with pytest.raises(UserError, match="mine.jsonl line 3 is not UTF-8"):
        load_rtp_jsonl(path)


def test_shared_sets_through_the_dataset_flag(shared_data):
    rtp, _ = load_spec(parse_dataset(f"rtp:{shared_data}/rtp-challenging/toxic.dev.jsonl"), "evaluation", CONDITIONS)
    assert len(rtp) == 800
    fig = shared_data / "figstep"
    items, _ = load_spec(parse_dataset(f"figstep:{fig}/SafeBench-Tiny.csv:{fig}/SafeBench-Tiny"), "evaluation",
                         CONDITIONS)
    assert len(items) == 50 and all(it.condition == "typographic" for it in items)
