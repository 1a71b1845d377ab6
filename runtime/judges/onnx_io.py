"""ONNX plumbing shared by the ONNX-backed judges: the onnx package for their one-time conversions, and
single-threaded CPU sessions to run them.

One intra-op thread on purpose: judges score small batches of short texts, where extra threads only
contend with the model under test (measured: a 256-text BiLSTM batch took 8x longer with numpy's
multithreaded BLAS on a busy 2-core host), and one thread keeps scores bit-identical across machines.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.errors import UserError


def import_onnx(purpose: str) -> Any:
    """The onnx module, or a UserError saying that `purpose` needs it once per asset cache."""
    try:
        import onnx
    except ImportError as e:
        raise UserError(f"{purpose} needs the onnx package, once per asset cache: `pip install onnx` "
                        f"(or copy the converted judge from a machine that has it into $SGM_CACHE/derived)") from e
    return onnx


def cpu_session(path: str | Path, judge: str) -> Any:
    """An ONNX Runtime CPU session on one thread for the judge `judge`'s graph at `path`."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise UserError(f"judge {judge!r} runs in ONNX Runtime: install it with `pip install 'sgm-edge[cpu]'`") from e
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types; all mean the same thing here.
        raise UserError(f"ONNX Runtime cannot load judge {judge!r} from {path} ({e}); delete that converted judge "
                        f"from the asset cache ($SGM_CACHE/derived) so it is rebuilt") from e
