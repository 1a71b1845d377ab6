"""The deployable bundle: three ONNX graphs, the tokenizer, runtime.json and a manifest, written atomically.

    python -m compile.export --model build/detoxified --out build/bundle

Layout (the contract with runtime/): `vision.onnx`, `embed.onnx`, `decoder.onnx` (plus `<graph>.onnx.data`
for a graph over 2 GB), `tokenizer.json` (the tokenizers-library file, `<image>` included), `runtime.json`
(I/O names, shapes, image token, preprocessing, prompt formats, eos / pad ids) and `manifest.json` (kind
"sgm-bundle": sha256 of every file; provenance: model and fingerprint, experts artifact and fold when the
model is a folded checkpoint, export settings and validation, package versions).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from calib.models import load_model, resolve
from calib.models.base import IMAGE_PLACEHOLDER, MultimodalModel
from compile.export import DEFAULT_OPSET, export_graphs, package_versions, validate_graphs
from compile.export.parts import DECODER, EMBED, VISION, head_dim, text_config
from compile.export.validate import CHECK_QUESTIONS
from compile.fold import KIND as FOLDED_KIND
from runtime.artifacts import MANIFEST, atomic_dir, check_output, read_manifest, sha256_file, write_manifest
from runtime.bundle import BUNDLE_KIND, FORMAT_VERSION, RUNTIME_FILE, TOKENIZER_FILE
from runtime.errors import UserError

QUESTION = "{question}"


def runtime_config(model: MultimodalModel, name: str | None = None) -> dict[str, Any]:
    """runtime.json: everything the torch-free runtime needs to drive the three graphs."""
    cfg = text_config(model)
    return {
        "format_version": FORMAT_VERSION,
        "model": name or model.name,
        "dtype": "float32",
        "graphs": {VISION: f"{VISION}.onnx", EMBED: f"{EMBED}.onnx", DECODER: f"{DECODER}.onnx"},
        "vision": {"input": "pixel_values", "output": "image_embeds"},
        "embed": {"input": "input_ids", "output": "inputs_embeds"},
        "decoder": {"inputs_embeds": "inputs_embeds", "attention_mask": "attention_mask",
                    "position_ids": "position_ids", "past_key": "past_key_values.{i}.key",
                    "past_value": "past_key_values.{i}.value", "logits": "logits",
                    "present_key": "present.{i}.key", "present_value": "present.{i}.value"},
        "num_layers": int(cfg.num_hidden_layers),
        "num_kv_heads": int(cfg.num_key_value_heads),
        "head_dim": head_dim(cfg),
        "hidden_size": int(cfg.hidden_size),
        "vocab_size": int(cfg.vocab_size),
        "image_token_id": int(model.image_token_id),
        "num_image_tokens": int(model.num_image_tokens),
        "image": model.image_spec.to_dict(),
        "prompt": {"text_format": model.chat_prompt(QUESTION, False),
                   "image_format": model.chat_prompt(QUESTION, True),
                   "image_placeholder": IMAGE_PLACEHOLDER,
                   "add_special_tokens": bool(model.add_special_tokens())},
        "context_length": int(cfg.max_position_embeddings),
        "eos_token_ids": [int(t) for t in model.eos_token_ids],
        "pad_token_id": int(model.pad_token_id),
        "clean_up_tokenization_spaces": bool(getattr(model.tokenizer, "clean_up_tokenization_spaces", False)),
    }


def write_tokenizer(model: MultimodalModel, out: Path) -> None:
    """Save the fast tokenizer's backend and check it tokenizes prompts exactly as the model does."""
    from tokenizers import Tokenizer

    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{model.name} has no fast (tokenizers-library) tokenizer; the bundle needs tokenizer.json")
    backend.save(str(out / TOKENIZER_FILE))
    saved = Tokenizer.from_file(str(out / TOKENIZER_FILE))
    fmt = runtime_config(model)["prompt"]
    for question in CHECK_QUESTIONS:
        for text in (fmt["text_format"].replace(QUESTION, question), fmt["image_format"].replace(QUESTION, question)):
            ids = saved.encode(text, add_special_tokens=fmt["add_special_tokens"]).ids
            expanded = [i for t in ids for i in ([t] * model.num_image_tokens if t == model.image_token_id else [t])]
            if expanded != model.tokenize(text):
                raise UserError(f"{model.name}: tokenizer.json does not reproduce the model's tokenizer on {text!r}; "
                                "the tokenizer relies on Python-side behaviour the bundle cannot carry")


def display_name(source: dict[str, Any]) -> str:
    """The model's name for runtime.json: a folded checkpoint is named after its source model."""
    original = (source.get("source") or {}).get("name")
    return f"{original}-detoxified" if source.get("folded") and original else source["name"]


def source_provenance(location: Any, model: MultimodalModel) -> dict[str, Any]:
    """What the model was made from: for a folded checkpoint, its (verified) manifest's experts and fold."""
    info: dict[str, Any] = {"name": model.name, "location": str(location), **model.fingerprint(),
                            "folded": False, "experts": None, "fold": None}
    path = Path(str(location))
    if (path / MANIFEST).is_file():
        manifest = read_manifest(path)
        if manifest.get("kind") == FOLDED_KIND:
            info.update(folded=True, detoxified_manifest_sha256=sha256_file(path / MANIFEST),
                        experts=manifest.get("experts"), fold=manifest.get("fold"), source=manifest.get("source"))
    marker = model.config_dict().get("sgm_folded")
    if marker is not None:
        info["folded"] = True
        info["sgm_folded"] = marker
    return info


def _prepare_out(out: Path, overwrite: bool) -> bool:
    """Refuse an output directory with foreign content; returns whether atomic_dir may replace `out`."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise UserError(f"{out} exists and is not a directory; choose another output directory")
    if not any(out.iterdir()):
        return True
    kind = None
    if (out / MANIFEST).is_file():
        try:
            kind = read_manifest(out, verify=False).get("kind")
        except UserError:
            kind = None
    if kind != BUNDLE_KIND:
        raise UserError(f"{out} exists and holds other files (not a bundle); choose another output directory "
                        "or remove it first")
    if not overwrite:
        raise UserError(f"{out} already holds a bundle; pass --overwrite to replace it or choose another directory")
    return True


def export_bundle(model_name_or_path: str, out_dir: str | os.PathLike, opset: int = DEFAULT_OPSET,
                  external_data: bool = False, tolerances: dict[str, float] | None = None,
                  overwrite: bool = False, system_prompt: str | None = None) -> dict[str, Any]:
    """Export a model (zoo name or directory, typically a folded checkpoint) to a validated bundle; returns
    the manifest. Nothing is left at `out_dir` unless every graph passes its check against PyTorch.
    `system_prompt`: text the runtime puts ahead of every request (runtime.json prompt.system_prompt; SGM*)."""
    out = check_output(out_dir, [model_name_or_path], kind=BUNDLE_KIND)
    replace = _prepare_out(out, overwrite)
    model_type, location = resolve(model_name_or_path)
    model = load_model(model_name_or_path)
    source = source_provenance(location, model)
    with atomic_dir(out, overwrite=replace) as tmp:
        graphs = export_graphs(model, tmp, opset=opset, external_data=external_data)
        checks = validate_graphs(model, tmp, tolerances)
        write_tokenizer(model, tmp)
        config = runtime_config(model, display_name(source))
        if system_prompt:
            config["prompt"]["system_prompt"] = system_prompt
        (tmp / RUNTIME_FILE).write_text(json.dumps(config, indent=2) + "\n")
        manifest = write_manifest(
            tmp, BUNDLE_KIND, format_version=FORMAT_VERSION, model_type=model_type, model=source,
            export={"exporter": "optimum.exporters.onnx.export_models", "opset": opset, "dtype": "float32",
                    "external_data": {n: g["external_data"] for n, g in graphs.items()},
                    "graphs": graphs, "validation": [c.to_dict() for c in checks]},
            versions=package_versions())
    return manifest
