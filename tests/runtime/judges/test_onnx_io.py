"""ONNX plumbing of the judges: clear errors, and converted judges that run on the runtime's own dependencies."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from runtime.errors import UserError
from runtime.judges.onnx_io import cpu_session, import_onnx


def test_missing_onnx_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(UserError, match="pip install onnx"):
        import_onnx("converting a judge")


def test_corrupt_graph_is_a_user_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match="delete that converted judge"):
        cpu_session(bad, "test")


def test_converted_judges_need_neither_onnx_nor_h5py_nor_torch():
    """Converted once (here, in this process's cache), the judges score with numpy + onnxruntime only."""
    from runtime.judges.hatesonar import converted as hatesonar_converted
    from runtime.judges.jigsaw_bilstm import converted as bilstm_converted

    bilstm_converted(), hatesonar_converted()
    code = textwrap.dedent("""
        import sys
        for blocked in ("onnx", "h5py", "torch", "transformers"):
            sys.modules[blocked] = None  # importing any of them now raises ImportError
        from runtime.judges.hatesonar import HateSonarJudge
        from runtime.judges.jigsaw_bilstm import JigsawBiLSTMJudge
        toxic, clean = JigsawBiLSTMJudge().score(["you stupid idiot", "thank you, have a nice day"])
        assert toxic > 0.5 > clean, (toxic, clean)
        offensive, neutral = HateSonarJudge().score(["shut up you stupid bitch", "the train leaves at nine"])
        assert offensive > 0.5 > neutral, (offensive, neutral)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
