"""ONNX graph files: load, save (external data past protobuf's limit, as the bundle does), find nodes by module.

The exporter names every node after the torch module it came from ("/inner/model/language_model/layers.3/
mlp/up_proj/MatMul"), and ORT's quantizers keep that name with a suffix ("..._Q4"), so a hooked MLP unit
("layers.3.mlp.up_proj") is found in a graph by its node name at every stage.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import onnx

from runtime.errors import UserError

OFFSETS_SUFFIX = "_offsets"  # a GGUF-converted Linear's companion MatMul (compile.quantize.gguf): block sums x offsets
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes; protobuf refuses files past 2 GB
_UNIT = re.compile(r"layers\.(\d+)/mlp/(gate_proj|up_proj|down_proj)/")


def load_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """A graph with its external data loaded."""
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        raise UserError(f"cannot read the ONNX graph {path} ({type(e).__name__}: {e}); rebuild the bundle") from e


def save_graph(model: onnx.ModelProto, path: str | os.PathLike) -> str | None:
    """Write `model` to `path`; weights go to `<name>.data` beside it when the file would pass 2 GB.
    Returns the external data file name (or None)."""
    path = Path(path)
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        return path.name + ".data"
    onnx.save_model(model, str(path))
    return None


def unit_of(node_name: str) -> str | None:
    """The MLP unit key ("layers.{i}.mlp.{module}") a node was exported from, or None."""
    m = _UNIT.search(node_name)
    return f"layers.{m.group(1)}.mlp.{m.group(2)}" if m else None


def is_lm_head(node_name: str) -> bool:
    return "lm_head" in node_name


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The MatMuls whose second input is a 2-D initializer (the Linears weight-only quantizers rewrite)."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type == "MatMul" and len(n.input) == 2 and len(shapes.get(n.input[1], ())) == 2]


def graph_bytes(directory: Path, rel: str) -> int:
    """Size of a graph file plus its external data file."""
    size = (directory / rel).stat().st_size
    data = directory / (rel + ".data")
    return size + (data.stat().st_size if data.is_file() else 0)
