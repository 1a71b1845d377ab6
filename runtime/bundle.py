"""A compiled bundle on disk: manifest check, `runtime.json` parsed into typed config, file locations.

`load_bundle(dir)` verifies the sha256 of every file (runtime.artifacts.read_manifest), refuses a bundle
written for a newer runtime, and checks that runtime.json names every field the generation loop needs,
so a bad bundle fails here with a message naming the field, not deep inside a session run.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.artifacts import read_manifest, sha256_json
from runtime.errors import UserError
from runtime.preprocess import ImageSpec
from runtime.protocol import with_system_prompt

BUNDLE_KIND = "sgm-bundle"
FORMAT_VERSION = 1
RUNTIME_FILE = "runtime.json"
TOKENIZER_FILE = "tokenizer.json"
GRAPHS = ("vision", "embed", "decoder")
FUSED_DECODER = "fused_decoder"  # the optional graph of runtime.json's fused_decoder section
DTYPES = ("float32", "float16")
DTYPE_PRECISION = {"float32": "fp32", "float16": "fp16"}  # the precision of a bundle compile.quantize did not write


@dataclass(frozen=True)
class GraphIO:
    """Input and output names of a single-input, single-output graph (vision, embed)."""

    input: str
    output: str


@dataclass(frozen=True)
class DecoderIO:
    """The decoder's tensor names; the past/present names hold `{i}` for the layer index."""

    inputs_embeds: str
    attention_mask: str
    position_ids: str
    past_key: str
    past_value: str
    logits: str
    present_key: str
    present_value: str

    def past_names(self, num_layers: int) -> list[str]:
        """Past key/value input names, key then value, layer by layer."""
        return [n.format(i=i) for i in range(num_layers) for n in (self.past_key, self.past_value)]

    def present_names(self, num_layers: int) -> list[str]:
        """Present key/value output names, in the same order as `past_names`."""
        return [n.format(i=i) for i in range(num_layers) for n in (self.present_key, self.present_value)]


@dataclass(frozen=True)
class FusedDecoderSpec:
    """An optional second decoder for the same weights, built with fused ONNX Runtime contrib kernels
    (GroupQueryAttention, MatMulNBits, SkipSimplifiedLayerNormalization; compile.fused). TensorRT cannot parse it,
    so the standard `decoder` graph stays in the bundle; a runtime that does not know this section ignores it.

    Unlike the standard decoder it takes no position ids (positions follow from the attention mask, so prompts
    must not be left-padded), reads and writes one key/value buffer per layer in place (`kv_buffer` "shared":
    past and present are the same [b, kv_heads, capacity, head_dim] tensor), and with `logits` "last" gives the
    last position's logits only.
    """

    graph: str
    inputs_embeds: str
    attention_mask: str
    past_key: str
    past_value: str
    logits: str
    present_key: str
    present_value: str
    logits_positions: str = "last"  # "last" or "all"
    kv_buffer: str = "shared"  # "shared" (past and present bound to one buffer) or "concat"
    providers: tuple[str, ...] = ("cpu",)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "FusedDecoderSpec":
        if not isinstance(d, dict):
            raise UserError(f"{where}: fused_decoder must be an object; rebuild the bundle")
        names = ("graph", "inputs_embeds", "attention_mask", "past_key", "past_value", "logits", "present_key",
                 "present_value")
        missing = [k for k in names if not isinstance(d.get(k), str)]
        if missing:
            raise UserError(f"{where}: fused_decoder.{missing[0]} is missing; rebuild the bundle")
        spec = cls(**{k: d[k] for k in names}, logits_positions=str(d.get("logits_positions", "last")),
                   kv_buffer=str(d.get("kv_buffer", "shared")),
                   providers=tuple(str(p) for p in d.get("providers", ("cpu",))))
        for name in ("past_key", "past_value", "present_key", "present_value"):
            if "{i}" not in getattr(spec, name):
                raise UserError(f"{where}: fused_decoder.{name} must hold '{{i}}' for the layer index")
        if spec.logits_positions not in ("last", "all"):
            raise UserError(f"{where}: fused_decoder.logits_positions must be 'last' or 'all'")
        if spec.kv_buffer not in ("shared", "concat"):
            raise UserError(f"{where}: fused_decoder.kv_buffer must be 'shared' or 'concat'")
        return spec

    def past_names(self, num_layers: int) -> list[str]:
        return [n.format(i=i) for i in range(num_layers) for n in (self.past_key, self.past_value)]

    def present_names(self, num_layers: int) -> list[str]:
        return [n.format(i=i) for i in range(num_layers) for n in (self.present_key, self.present_value)]


@dataclass(frozen=True)
class PromptSpec:
    """How a request becomes text: `{question}` in a format; the image placeholder; BOS or not; the system prompt
    the bundle puts ahead of every request (SGM*: runtime.protocol.with_system_prompt), None for none."""

    text_format: str
    image_format: str
    image_placeholder: str
    add_special_tokens: bool
    system_prompt: str | None = None

    def render(self, question: str, with_image: bool, chat: bool = True) -> str:
        """The prompt text of one request (the raw question, after the system prompt, when `chat` is false)."""
        question = with_system_prompt(question, self.system_prompt)
        if not chat:
            return question
        return (self.image_format if with_image else self.text_format).replace("{question}", question)


@dataclass(frozen=True)
class BundleSpec:
    """The typed content of runtime.json."""

    format_version: int
    model: str
    dtype: str
    graphs: dict[str, str]
    vision: GraphIO
    embed: GraphIO
    decoder: DecoderIO
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    image_token_id: int
    num_image_tokens: int
    image: ImageSpec
    prompt: PromptSpec
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    clean_up_tokenization_spaces: bool = False
    fused_decoder: FusedDecoderSpec | None = None
    context_length: int | None = None  # the positions the decoder takes; None in bundles made before it was recorded

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = RUNTIME_FILE) -> "BundleSpec":
        """Parse runtime.json, with an error naming the first missing or malformed field."""
        if not isinstance(d, dict):
            raise UserError(f"{where} must hold a JSON object; rebuild the bundle")
        version = _field(d, "format_version", int, where)
        if version > FORMAT_VERSION:
            raise UserError(f"{where} has format_version {version}, but this runtime reads up to {FORMAT_VERSION}; "
                            "upgrade the runtime (pip install -U sgm-edge) or rebuild the bundle with this toolchain")
        if version < 1:
            raise UserError(f"{where} has format_version {version}; valid versions start at 1; rebuild the bundle")
        dtype = _field(d, "dtype", str, where)
        if dtype not in DTYPES:
            raise UserError(f"{where}: dtype {dtype!r} is not supported (one of {', '.join(DTYPES)}); "
                            "rebuild the bundle")
        graphs = _field(d, "graphs", dict, where)
        for g in GRAPHS:
            if not isinstance(graphs.get(g), str):
                raise UserError(f"{where}: graphs.{g} is missing; a bundle needs {', '.join(GRAPHS)} graphs")
        prompt = _field(d, "prompt", dict, where)
        dec = _field(d, "decoder", dict, where)
        try:
            decoder = DecoderIO(**{k: str(dec[k]) for k in DecoderIO.__dataclass_fields__})
            vision = GraphIO(**{k: str(_field(d, "vision", dict, where)[k]) for k in ("input", "output")})
            embed = GraphIO(**{k: str(_field(d, "embed", dict, where)[k]) for k in ("input", "output")})
            prompt_spec = PromptSpec(text_format=str(prompt["text_format"]), image_format=str(prompt["image_format"]),
                                     image_placeholder=str(prompt["image_placeholder"]),
                                     add_special_tokens=bool(prompt["add_special_tokens"]),
                                     system_prompt=prompt.get("system_prompt"))
        except KeyError as e:
            raise UserError(f"{where}: field {e.args[0]!r} is missing from an I/O or prompt section; "
                            "rebuild the bundle") from None
        for name in ("past_key", "past_value", "present_key", "present_value"):
            if "{i}" not in getattr(decoder, name):
                raise UserError(f"{where}: decoder.{name} must hold '{{i}}' for the layer index")
        if prompt_spec.system_prompt is not None and not (isinstance(prompt_spec.system_prompt, str)
                                                          and prompt_spec.system_prompt.strip()):
            raise UserError(f"{where}: prompt.system_prompt must be a non-empty string or absent; rebuild the bundle")
        for name in ("text_format", "image_format"):
            if "{question}" not in getattr(prompt_spec, name):
                raise UserError(f"{where}: prompt.{name} must hold '{{question}}'")
        if prompt_spec.image_placeholder not in prompt_spec.image_format:
            raise UserError(f"{where}: prompt.image_format has no {prompt_spec.image_placeholder!r} placeholder")
        eos = _field(d, "eos_token_ids", list, where)
        if not eos or not all(isinstance(t, int) for t in eos):
            raise UserError(f"{where}: eos_token_ids must be a non-empty list of token ids")
        return cls(
            format_version=version, model=_field(d, "model", str, where), dtype=dtype,
            graphs={g: graphs[g] for g in GRAPHS}, vision=vision, embed=embed, decoder=decoder,
            num_layers=_positive(d, "num_layers", where), num_kv_heads=_positive(d, "num_kv_heads", where),
            head_dim=_positive(d, "head_dim", where), hidden_size=_positive(d, "hidden_size", where),
            vocab_size=_positive(d, "vocab_size", where), image_token_id=_field(d, "image_token_id", int, where),
            num_image_tokens=_positive(d, "num_image_tokens", where),
            image=ImageSpec.from_dict(_field(d, "image", dict, where)), prompt=prompt_spec,
            eos_token_ids=tuple(eos), pad_token_id=_field(d, "pad_token_id", int, where),
            clean_up_tokenization_spaces=bool(d.get("clean_up_tokenization_spaces", False)),
            fused_decoder=FusedDecoderSpec.from_dict(d["fused_decoder"], where) if d.get("fused_decoder") else None,
            context_length=_positive(d, "context_length", where) if "context_length" in d else None,
        )


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory: its spec, its manifest, and where its files are."""

    root: Path
    spec: BundleSpec
    manifest: dict[str, Any]

    def graph_path(self, graph: str) -> Path:
        """The ONNX file of `graph` (vision, embed, decoder, or fused_decoder when the bundle has one)."""
        if graph == FUSED_DECODER:
            if self.spec.fused_decoder is None:
                raise UserError(f"{self.root} has no fused decoder; build one with `python -m compile.fused`")
            return self.root / self.spec.fused_decoder.graph
        return self.root / self.spec.graphs[graph]

    @property
    def tokenizer_path(self) -> Path:
        return self.root / TOKENIZER_FILE

    @property
    def quantization(self) -> dict[str, Any]:
        """compile.quantize's record (name, method, settings, per-graph results); empty for an exported bundle."""
        record = self.manifest.get("precision")
        return record if isinstance(record, dict) else {}

    @property
    def precision(self) -> str:
        """The weights' precision in compile.build's names: fp32, fp16, int8, int4, int8-qdq or int4-qdq."""
        return str(self.quantization.get("name") or DTYPE_PRECISION[self.spec.dtype])

    @property
    def fingerprint(self) -> str:
        """sha256 over the manifest's file hashes: identifies the bundle's exact content."""
        return sha256_json(self.manifest.get("files", {}))


def load_bundle(directory: str | os.PathLike, verify: bool = True) -> Bundle:
    """Open a bundle directory: check its manifest (sha256 of every file with `verify`) and runtime.json."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise UserError(f"bundle {directory} does not exist; build one with `python -m compile.export --out DIR`")
    manifest = read_manifest(root, verify=verify)
    kind = manifest.get("kind")
    if kind != BUNDLE_KIND:
        raise UserError(f"{root} holds a {kind!r} artifact, not a bundle ({BUNDLE_KIND!r}); "
                        "give the directory written by `python -m compile.export`")
    listed = manifest.get("files", {})
    for rel in (RUNTIME_FILE, TOKENIZER_FILE):
        if rel not in listed:
            raise UserError(f"{root}: {rel} is missing from the bundle; rebuild it")
    try:
        spec = BundleSpec.from_dict(json.loads((root / RUNTIME_FILE).read_text()), where=str(root / RUNTIME_FILE))
    except json.JSONDecodeError as e:
        raise UserError(f"{root / RUNTIME_FILE} is not valid JSON ({e}); rebuild the bundle") from e
    graphs = dict(spec.graphs)
    if spec.fused_decoder is not None:
        graphs[FUSED_DECODER] = spec.fused_decoder.graph
    for graph, rel in graphs.items():
        if rel not in listed:
            raise UserError(f"{root}: the {graph} graph {rel} is not listed in its manifest.json, so it is missing "
                            "or unverified; rebuild the bundle")
    return Bundle(root=root, spec=spec, manifest=manifest)


def _field(d: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = d.get(key)
    if value is None:
        raise UserError(f"{where}: field {key!r} is missing; rebuild the bundle")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{where}: field {key!r} must be a {kind.__name__}, got {value!r}; rebuild the bundle")
    return value


def _positive(d: dict[str, Any], key: str, where: str) -> int:
    value = _field(d, key, int, where)
    if value < 1:
        raise UserError(f"{where}: field {key!r} must be >= 1, got {value}")
    return value
