"""Export the three parts to ONNX through Optimum's `export_models`.

External data: a graph whose weights pass protobuf's 2 GB limit is written by the exporter with external
data; its tensors are then gathered into one `<graph>.onnx.data` file beside it (the bundle's convention).
"""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch

from calib.models.base import MultimodalModel
from compile.export.configs import onnx_config
from compile.export.parts import PARTS, parts

DEFAULT_OPSET = 17
MIN_OPSET = 17


@contextlib.contextmanager
def _forced_external_data(force: bool) -> Iterator[None]:
    """Optimum's switch (FORCE_ONNX_EXTERNAL_DATA) for writing external data below 2 GB."""
    old = os.environ.get("FORCE_ONNX_EXTERNAL_DATA")
    if force:
        os.environ["FORCE_ONNX_EXTERNAL_DATA"] = "1"
    try:
        yield
    finally:
        if force:
            if old is None:
                os.environ.pop("FORCE_ONNX_EXTERNAL_DATA", None)
            else:
                os.environ["FORCE_ONNX_EXTERNAL_DATA"] = old


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _rename_external_data(path: Path) -> str | None:
    """Point every external tensor of `path` at `<name>.data` (renaming the one file Optimum wrote)."""
    proto = onnx.load(str(path), load_external_data=False)
    locations = set()
    tensors = [t for t in _tensors(proto.graph) if onnx.external_data_helper.uses_external_data(t)]
    if not tensors:
        return None
    target = path.name + ".data"
    for t in tensors:
        for entry in t.external_data:
            if entry.key == "location":
                locations.add(entry.value)
                entry.value = target
    if len(locations) != 1:
        raise RuntimeError(f"{path}: external data spread over {len(locations)} files, expected one")
    (source,) = locations
    if source != target:
        os.replace(path.parent / source, path.parent / target)
    onnx.save(proto, str(path))
    return target


def _pin_static_dims(path: Path, dynamic: set[str]) -> None:
    """Give output axes that are not declared dynamic their static size, as ONNX Runtime infers it.

    Torch's exporter names some static axes (e.g. the image-token axis after a slice); Optimum's fix only
    runs when ONNX Runtime cannot infer them. Static non-batch axes keep TensorRT profiles simple.
    """
    proto = onnx.load(str(path), load_external_data=False)
    loose = [(i, j) for i, out in enumerate(proto.graph.output)
             for j, d in enumerate(out.type.tensor_type.shape.dim) if d.dim_param and d.dim_param not in dynamic]
    if not loose:
        return
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    shapes = [o.shape for o in ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).get_outputs()]
    changed = False
    for i, j in loose:
        if isinstance(shapes[i][j], int):
            proto.graph.output[i].type.tensor_type.shape.dim[j].dim_value = shapes[i][j]
            changed = True
    if changed:
        onnx.save(proto, str(path))


def export_graphs(model: MultimodalModel, out_dir: str | os.PathLike, opset: int = DEFAULT_OPSET,
                  external_data: bool = False, seed: int = 0) -> dict[str, dict]:
    """Write vision.onnx, embed.onnx and decoder.onnx for `model` into `out_dir`.

    `external_data` forces external weights for every graph (they are used anyway above 2 GB).
    Returns per graph: file name, external data file (or None), input and output names.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below {MIN_OPSET}, the lowest this export supports")
    from optimum.exporters.onnx import export_models

    out = Path(out_dir)
    modules = parts(model)
    configs = {name: (module, onnx_config(name, module.config)) for name, module in modules.items()}
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    with _forced_external_data(external_data):
        inputs, outputs = export_models(configs, output_dir=out, opset=opset,
                                        output_names=[f"{name}.onnx" for name in PARTS])
    result = {}
    for name, ins, outs in zip(PARTS, inputs, outputs):
        path = out / f"{name}.onnx"
        config = configs[name][1]
        _pin_static_dims(path, {a for axes in (*config.inputs.values(), *config.outputs.values()) for a in axes.values()})
        result[name] = {"file": path.name, "external_data": _rename_external_data(path),
                        "inputs": list(ins), "outputs": list(outs)}
    return result
