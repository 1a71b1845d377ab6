"""A hand-made bundle (runtime.json, tokenizer.json, three small ONNX graphs with the bundle's I/O names,
manifest) for tests of code that reads bundles but never runs their graphs (engine profiles, Jetson packaging)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from runtime.artifacts import write_manifest

SPEC: dict[str, Any] = {
    "format_version": 1, "model": "fake-llava", "dtype": "float32",
    "graphs": {"vision": "vision.onnx", "embed": "embed.onnx", "decoder": "decoder.onnx"},
    "vision": {"input": "pixel_values", "output": "image_embeds"},
    "embed": {"input": "input_ids", "output": "inputs_embeds"},
    "decoder": {"inputs_embeds": "inputs_embeds", "attention_mask": "attention_mask", "position_ids": "position_ids",
                "past_key": "past_key_values.{i}.key", "past_value": "past_key_values.{i}.value", "logits": "logits",
                "present_key": "present.{i}.key", "present_value": "present.{i}.value"},
    "num_layers": 3, "num_kv_heads": 2, "head_dim": 8, "hidden_size": 32, "vocab_size": 100,
    "image_token_id": 4, "num_image_tokens": 9,
    "image": {"size": 30, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resample": "bicubic"},
    "prompt": {"text_format": "USER: {question} ASSISTANT:", "image_format": "USER: <image>\n{question} ASSISTANT:",
               "image_placeholder": "<image>", "add_special_tokens": True},
    "eos_token_ids": [2], "pad_token_id": 3,
}


def _value(name: str, elem: int, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _model(inputs: list, outputs: list, nodes: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def graphs(spec: dict[str, Any]) -> dict[str, onnx.ModelProto]:
    """Graphs with the spec's I/O names, dtypes and symbolic dims (their arithmetic is not meaningful)."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    s, h, hd, hid = spec["image"]["size"], spec["num_kv_heads"], spec["head_dim"], spec["hidden_size"]
    v, e, d = spec["vision"], spec["embed"], spec["decoder"]
    vision = _model([_value(v["input"], f, ["n", 3, s, s])], [_value(v["output"], f, ["n", "t", hid])],
                    [helper.make_node("Identity", [v["input"]], [v["output"]])])
    embed = _model([_value(e["input"], i64, ["b", "s"])], [_value(e["output"], i64, ["b", "s"])],
                   [helper.make_node("Identity", [e["input"]], [e["output"]])])
    ins = [_value(d["inputs_embeds"], f, ["b", "s", hid]), _value(d["attention_mask"], i64, ["b", "past + s"]),
           _value(d["position_ids"], i64, ["b", "s"])]
    outs = [_value(d["logits"], f, ["b", "s", hid])]
    nodes = [helper.make_node("Identity", [d["inputs_embeds"]], [d["logits"]])]
    for i in range(spec["num_layers"]):
        for kind in ("key", "value"):
            past, present = d[f"past_{kind}"].format(i=i), d[f"present_{kind}"].format(i=i)
            ins.append(_value(past, f, ["b", h, "past", hd]))
            outs.append(_value(present, f, ["b", h, "past + s", hd]))
            nodes.append(helper.make_node("Identity", [past], [present]))
    return {"vision": vision, "embed": embed, "decoder": _model(ins, outs, nodes)}


def make_bundle(root: Path, spec: dict[str, Any] | None = None, decoder_bytes: bytes | None = None,
                **manifest_fields: Any) -> Path:
    """Write a bundle directory at `root` (its ONNX graphs from `graphs`, or raw `decoder_bytes`)."""
    spec = copy.deepcopy(spec or SPEC)
    root.mkdir(parents=True)
    for name, model in graphs(spec).items():
        onnx.save(model, str(root / spec["graphs"][name]))
    if decoder_bytes is not None:
        (root / spec["graphs"]["decoder"]).write_bytes(decoder_bytes)
    (root / "runtime.json").write_text(json.dumps(spec, indent=2))
    (root / "tokenizer.json").write_text("{}")
    write_manifest(root, "sgm-bundle", format_version=1, **manifest_fields)
    return root
