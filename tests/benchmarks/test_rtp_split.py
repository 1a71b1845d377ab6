"""The RTP calibration / held-out split (benchmarks/rtp_split.py): disjoint parts, benchmark prompts excluded."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from runtime.errors import UserError

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "rtp_split.py"
_spec = importlib.util.spec_from_file_location("rtp_split", _PATH)
rtp_split = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rtp_split)


def _write(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": {"text": p, "toxicity": 0.9}}) + "\n" for p in prompts))
    return path


def test_split_is_disjoint_and_drops_benchmark_prompts(tmp_path):
    toxic = _write(tmp_path / "toxic.jsonl", [f"t{i}" for i in range(6)])
    clean = _write(tmp_path / "clean.jsonl", [f"c{i}" for i in range(6)])
    calib, holdout, dropped = rtp_split.split_rows([toxic, clean], 3, {"t1", "t4", "c0"})
    prompts = lambda rows: [json.loads(r)["prompt"]["text"] for r in rows]
    assert prompts(calib) == ["t0", "t2", "c1", "c2"]
    assert prompts(holdout) == ["t3", "t5"]  # only the first file's rest is held out
    assert dropped == 3


def test_bad_row_names_its_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": {"text": "ok"}}) + "\n{not json\n")
    with pytest.raises(UserError, match="bad.jsonl line 2"):
        rtp_split.split_rows([bad], 1, set())
    with pytest.raises(UserError, match="does not exist"):
        rtp_split.split_rows([tmp_path / "missing.jsonl"], 1, set())
