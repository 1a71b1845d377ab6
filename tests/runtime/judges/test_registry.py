"""`load_judge`: names, specs, errors, and a torch-free import."""
from __future__ import annotations

import subprocess
import sys

import pytest

from runtime.errors import UserError
from runtime.judges import DEFAULT_JUDGE, KNOWN_JUDGES, Judge, load_judge
from runtime.judges.chat_api import ChatAPIJudge


def test_builtin_judges_by_name() -> None:
    assert DEFAULT_JUDGE == "bilstm"
    for name in ("bilstm", "hatesonar"):
        judge = load_judge(name, threshold=0.3)
        assert isinstance(judge, Judge) and judge.name == name and judge.threshold == 0.3


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UserError) as e:
        load_judge("perspective")
    assert "unknown judge 'perspective'" in str(e.value)
    assert all(k in str(e.value) for k in KNOWN_JUDGES)
    with pytest.raises(UserError, match="names no model"):
        load_judge("hf:")
    with pytest.raises(UserError, match="names no model"):
        load_judge("http:http://localhost:8000/v1")


@pytest.mark.parametrize("spec, url, model", [
    ("http:http://localhost:8000/v1#meta-llama/Llama-Guard-3-1B", "http://localhost:8000/v1/chat/completions",
     "meta-llama/Llama-Guard-3-1B"),
    ("http://localhost:11434#llama-guard3", "http://localhost:11434/v1/chat/completions", "llama-guard3"),
    ("https://api.example/v1#guard", "https://api.example/v1/chat/completions", "guard"),
    ("http:https://api.example/v1/chat/completions#m", "https://api.example/v1/chat/completions", "m"),
])
def test_http_specs(spec: str, url: str, model: str) -> None:
    judge = load_judge(spec)
    assert isinstance(judge, ChatAPIJudge) and judge.url == url and judge.model == model


def test_importing_judges_pulls_in_no_torch() -> None:
    code = ("import sys, runtime.judges, runtime.judge, runtime.judges.jigsaw_bilstm, runtime.judges.hatesonar, "
            "runtime.judges.hf, runtime.judges.chat_api, runtime.judges.validate\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'calib', 'compile') if m in sys.modules)\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""
