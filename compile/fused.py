"""Add a fused decoder to a CPU bundle: onnxruntime-genai's model builder on the bundle's own language model.

    python -m compile.fused --bundle build/bundle-int4 --checkpoint build/detoxified --out build/bundle-int4-fused

The standard decoder (Optimum export: MatMul, Softmax attention, a past/present concat per layer, logits for
every prompt position) stays in the bundle for TensorRT and for teacher-forced scoring. The fused decoder is
the same language model built by onnxruntime-genai's builder with `exclude_embeds=true` (it takes
inputs_embeds, so the bundle's vision and embed graphs feed it unchanged) and `prune_lm_head=true` (last
position's logits only): GroupQueryAttention reading and writing one key/value buffer per layer in place,
SkipSimplifiedLayerNormalization, and for int4 MatMulNBits (the builder's own RTN blocks of 32, accuracy level
4: not the GGUF's blocks of `compile.quantize --method gguf`). These are ONNX Runtime contrib ops, so the graph
is for the ONNX Runtime CPU provider only; runtime.json records it as `fused_decoder`, and the runtime uses it
when it runs on CPU (`--decoder standard` turns it off).

The builder is onnxruntime-genai 0.15.2's (the newest whose builder imports with the pinned transformers 4.57;
scripts/setup installs it into .venv), run as a subprocess of this interpreter through compile/genai_builder.py
(which takes Gemma 3's sliding / full layers from the config), on the language model extracted from --checkpoint
(the folded, detoxified checkpoint the bundle was exported from: the fold is already in its weights);
--builder-python runs it with another interpreter. Before anything is written the fused decoder is checked
against the bundle's standard decoder: greedy tokens and prefill logits on text and image prompts, within
TOLERANCE (fp32: the same greedy tokens on every prompt; both: max |d logit| at prefill); a decoder outside
them is refused. The result goes into the manifest as `check`. compile.build adds the fused decoder by default
on CPU for fp32 and int4 (`--no-fused` turns it off).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime import cli
from runtime.bundle import BUNDLE_KIND, GRAPHS, RUNTIME_FILE, Bundle
from runtime.errors import UserError

GRAPH_FILE = "decoder-fused.onnx"
PRECISIONS = ("fp32", "int4")
GQA_HEAD_MULTIPLE = 16  # "head_size shall be a multiple of 16" (GroupQueryAttention, onnxruntime 1.32 CPU)
RUNTIME_KEYS = ("graph", "inputs_embeds", "attention_mask", "past_key", "past_value", "logits", "present_key",
                "present_value", "logits_positions", "kv_buffer", "providers")
CHECK_QUESTIONS = ("What is in this picture?", "Write one sentence about the sea.", "Name three colours.")
BUILDER_SCRIPT = Path(__file__).resolve().with_name("genai_builder.py")
# int4 methods whose blocks compile.fused copies from the standard decoder (compile.quantize.gptq.DecoderBlocks; a
# mixed gptq bundle's exact GGUF Linears with their block-sum offsets); gguf-exact re-reads the GGUF instead
BUNDLE_BLOCK_METHODS = ("gptq", "rtn")
# What the check accepts, per precision: the largest |d logit| at prefill against the standard decoder of the same
# bundle, and whether every prompt's greedy tokens must be identical. fp32: the same weights and float math in
# another order (6e-5 on smol-llava). int4: the same weights, but MatMulNBits at accuracy level 4 quantizes the
# activations to int8 in both graphs and the attention's float differences move those roundings (1.1 on
# smol-llava's GGUF blocks); weights that are not the standard decoder's (the builder's own RTN against GGUF
# blocks: 22.5) are refused.
TOLERANCE = {"fp32": {"max_abs_dlogit": 1e-2, "identical_greedy": True},
             "int4": {"max_abs_dlogit": 4.0, "identical_greedy": False}}


def default_builder_python() -> str:
    """This interpreter (scripts/setup installs onnxruntime-genai's builder into .venv)."""
    return sys.executable


_AVAILABLE: dict[str, str | None] = {}
_VERSIONS: dict[str, str] = {}
_IMPORT_BUILDER = ("import onnxruntime_genai, onnxruntime_genai.models.builder, onnx_ir; "
                   "print(onnxruntime_genai.__version__)")


def builder_missing(python: str) -> str | None:
    """None when `python` can import onnxruntime-genai's builder, else the reason it cannot (asked once)."""
    if python not in _AVAILABLE:
        try:
            p = subprocess.run([python, "-c", _IMPORT_BUILDER], capture_output=True, text=True, timeout=300)
            why = None if p.returncode == 0 else (p.stderr.strip().splitlines() or ["import failed"])[-1]
            if why is None:
                _VERSIONS[python] = p.stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            why = f"{python}: {e}"
        _AVAILABLE[python] = why
    return _AVAILABLE[python]


def builder_version(python: str) -> str | None:
    """onnxruntime-genai's version in `python` (None when its builder is not importable there)."""
    return _VERSIONS.get(python) if builder_missing(python) is None else None


def cannot_fuse(spec: Any, precision: str) -> str | None:
    """Why a bundle of this spec gets no fused decoder at `precision` (None when it can)."""
    if precision not in PRECISIONS:
        return f"a fused decoder is built in fp32 or int4, not {precision}"
    if spec.head_dim % GQA_HEAD_MULTIPLE:
        return (f"ONNX Runtime's GroupQueryAttention on CPU needs a head size that is a multiple of "
                f"{GQA_HEAD_MULTIPLE}; this model's is {spec.head_dim}, so it keeps the standard decoder")
    return None


def extract_language_model(checkpoint: str | os.PathLike, out: Path) -> dict[str, Any]:
    """Save the checkpoint's language model as a plain Hugging Face causal LM directory (with the tokenizer)."""
    from calib.models import load_model
    from compile.recipes import recipe_for

    model = load_model(str(checkpoint))
    lm = recipe_for(model).causal_lm(model)
    lm.save_pretrained(out, safe_serialization=True)
    model.tokenizer.save_pretrained(out)
    return {"checkpoint": str(checkpoint), **model.fingerprint()}


EXTRA_OPTIONS = ("exclude_embeds=true", "prune_lm_head=true")


def rtn_options(quantization: dict[str, Any]) -> list[str]:
    """The builder's int4 options that make its RTN round as compile.quantize's rtn method did for the bundle
    (symmetric or not, block size, accuracy level), so the fused decoder holds the standard decoder's weights."""
    if quantization.get("method") != "rtn":
        return []
    return [f"is_symmetric={str(bool(quantization.get('symmetric'))).lower()}",
            f"block_size={int(quantization.get('block_size') or 32)}",
            f"accuracy_level={int(quantization.get('accuracy_level') or 4)}"]


def run_builder(python: str, lm_dir: Path, out: Path, precision: str, cache: Path, extra: Sequence[str] = ()) -> None:
    cmd = [python, str(BUILDER_SCRIPT), "-i", str(lm_dir), "-o", str(out), "-p", precision,
           "-e", "cpu", "-c", str(cache), "--extra_options", *EXTRA_OPTIONS, *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent)
    if p.returncode != 0 or not (out / "model.onnx").is_file():
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise UserError(f"onnxruntime-genai's builder failed ({' '.join(cmd)}):\n{tail}")


def decoder_section(graph_dir: Path) -> dict[str, Any]:
    """runtime.json's fused_decoder section from the builder's genai_config.json and graph."""
    import onnx

    cfg = json.loads((graph_dir / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    inputs, outputs = dec["inputs"], dec["outputs"]
    model = onnx.load(str(graph_dir / dec["filename"]), load_external_data=False)
    in_names = {i.name for i in model.graph.input}
    out_shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    embeds = inputs.get("inputs_embeds", "inputs_embeds")
    if embeds not in in_names or "input_ids" in in_names:
        raise UserError("the builder's decoder does not take inputs_embeds (exclude_embeds did not apply)")
    extra = sorted(in_names - {embeds, inputs["attention_mask"]} -
                   {inputs[k].replace("%d", str(i)) for k in ("past_key_names", "past_value_names")
                    for i in range(dec["num_hidden_layers"])})
    if extra:
        raise UserError(f"the builder's decoder has inputs the runtime does not feed: {', '.join(extra)}")
    logits = outputs["logits"]
    ops = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})
    return {"graph": GRAPH_FILE, "inputs_embeds": embeds, "attention_mask": inputs["attention_mask"],
            "past_key": inputs["past_key_names"].replace("%d", "{i}"),
            "past_value": inputs["past_value_names"].replace("%d", "{i}"), "logits": logits,
            "present_key": outputs["present_key_names"].replace("%d", "{i}"),
            "present_value": outputs["present_value_names"].replace("%d", "{i}"),
            "logits_positions": "last" if out_shapes[logits][1] in (1, "1") else "all",
            "kv_buffer": "shared" if cfg.get("search", {}).get("past_present_share_buffer") else "concat",
            "providers": ["cpu"], "contrib_ops": ops}


_FUSED_NODE = re.compile(r"layers\.(\d+)/(attn/qkv_proj|attn/o_proj|mlp/gate_proj|mlp/up_proj|mlp/down_proj)/MatMul$")
_GGUF = {"attn/o_proj": "attn_output", "mlp/gate_proj": "ffn_gate", "mlp/up_proj": "ffn_up", "mlp/down_proj": "ffn_down"}


def gguf_blocks_for(node_name: str, weights: Any) -> Any:
    """The GGUF blocks of one of the builder's MatMuls: q, k and v stacked for its fused qkv_proj, or, where they are
    quantized differently (bits, block size, zero points: a mixed bundle), the three apart as a tuple."""
    from compile.quantize.gguf import Blocks

    if node_name.endswith("lm_head/MatMul"):
        return weights.blocks("token_embd.weight")
    m = _FUSED_NODE.search(node_name)
    if m is None:
        return None
    i, module = m.group(1), m.group(2)
    if module == "attn/qkv_proj":
        parts = [weights.blocks(f"blk.{i}.attn_{x}.weight") for x in "qkv"]
        if len({(p.bits, p.block_size, p.zero_points is None) for p in parts}) != 1:
            return tuple(parts)
        zps = [p.zero_points for p in parts]
        return Blocks(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("codes", "scales", "offsets")),
                      parts[0].bits, None if zps[0] is None else np.concatenate(zps))
    return weights.blocks(f"blk.{i}.{_GGUF[module]}.weight")


def split_qkv(node: Any, parts: tuple[Any, ...], inits: dict[str, Any]) -> tuple[list[Any], Any]:
    """The builder's fused qkv MatMul as three MatMuls (one per part's weight columns) and a Concat of their outputs
    back into the packed qkv GroupQueryAttention reads: for q, k and v whose blocks cannot be stacked."""
    from onnx import helper, numpy_helper

    w = numpy_helper.to_array(inits[node.input[1]])
    ends = np.cumsum([p.codes.shape[0] for p in parts])
    if ends[-1] != w.shape[1]:
        raise UserError(f"{node.name}: q, k and v have {ends[-1]} rows in the GGUF, the graph's weight {w.shape[1]}")
    prefix = node.name.rsplit("/qkv_proj/", 1)[0]
    matmuls = []
    for x, lo, hi in zip("qkv", [0, *ends[:-1]], ends):
        name = f"{node.input[1]}_{x}"
        inits[name] = numpy_helper.from_array(np.ascontiguousarray(w[:, lo:hi]), name)
        matmuls.append(helper.make_node("MatMul", [node.input[0], name], [f"{node.output[0]}_{x}"],
                                        name=f"{prefix}/{x}_proj/MatMul"))
    concat = helper.make_node("Concat", [m.output[0] for m in matmuls], [node.output[0]], axis=-1,
                              name=f"{prefix}/qkv_proj/Concat")
    return matmuls, concat


def convert_to_gguf(model: Any, weights: Any, row_scales: dict[str, np.ndarray] | None,
                    accuracy_level: int = 4, approximation: Any = None) -> dict[str, Any]:
    """The builder's float32 MatMuls as MatMulNBits with the GGUF's own blocks (+ block-sum offsets), as
    compile.quantize.gguf does for the standard decoder; each converted weight is checked against the float32 one
    (so a folded checkpoint converts with its SGM factors in the scales, `row_scales`). `approximation`
    (compile.quantize.gguf.Approximation, the bundle's) changes the blocks as it did the standard decoder's."""
    from compile.quantize.gguf import _com_microsoft, departure_summary, replace_matmul, rewrite_graph

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, added, dropped, sums_of = [], [], set(), {}
    converted: dict[str, int] = {}
    folded, worst, departures = [], 0.0, {}
    for node in graph.node:
        blocks = gguf_blocks_for(node.name, weights) if node.op_type == "MatMul" and node.input[1] in inits else None
        if blocks is None:
            nodes.append(node)
            continue
        if isinstance(blocks, tuple):
            matmuls, concat = split_qkv(node, blocks, inits)
            dropped.add(node.input[1])
            pairs = list(zip(matmuls, blocks))
            kind = "qkv apart (" + " / ".join(f"Q{b.bits}" for b in blocks) + ")"
        else:
            concat, pairs, kind = None, [(node, blocks)], f"Q{blocks.bits}"
        for mm, b in pairs:
            worst = max(worst, replace_matmul(mm, b, inits, row_scales, folded, sums_of, nodes, added, dropped,
                                              accuracy_level, approximation=approximation, departures=departures,
                                              exact=getattr(weights, "exact", True)))
        if concat is not None:
            nodes.append(concat)
        converted[kind] = converted.get(kind, 0) + 1
    layers = sum(1 for n in graph.node if n.name.endswith("qkv_proj/MatMul"))
    if sum(converted.values()) != 5 * layers + 1:
        raise UserError(f"only {sum(converted.values())} of the fused decoder's {5 * layers + 1} MatMuls map to GGUF "
                        "tensors; this builder's graph is not one this converter knows")
    if row_scales and sorted(folded) != sorted(row_scales):
        raise UserError(f"{len(row_scales) - len(folded)} of the experts' modules have no converted MatMul")
    rewrite_graph(graph, nodes, dropped, added)
    _com_microsoft(model)
    stats = {"method": getattr(weights, "method", "gguf-exact"), "converted": converted,
             "max_abs_diff_vs_float32": worst, "folded_modules": len(folded), "accuracy_level": accuracy_level}
    if approximation is not None and not approximation.exact:
        stats["approximation"] = {**approximation.to_dict(), "departures": departure_summary(departures)}
    return stats


def copy_graph(graph_dir: Path, out: Path, gguf: tuple[Any, ...] | None = None) -> dict[str, Any] | None:
    """The builder's model.onnx (+ model.onnx.data) as decoder-fused.onnx (+ decoder-fused.onnx.data);
    `gguf` = (GGUFWeights, row scales, accuracy level[, approximation]): convert its float32 MatMuls to the GGUF's
    blocks on the way."""
    import onnx

    model = onnx.load(str(graph_dir / "model.onnx"))
    stats = convert_to_gguf(model, *gguf) if gguf is not None else None
    onnx.save_model(model, str(out / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=GRAPH_FILE + ".data", size_threshold=1024)
    return stats


def check(new_dir: Path, new_tokens: int = 16, threads: int | None = None) -> dict[str, Any]:
    """Greedy tokens and prefill logits of the fused decoder against the standard one, on the new bundle
    (runtime.compare)."""
    import numpy as np

    from runtime.compare import combine, compare_arrays, compare_tokens
    from runtime.generate import BundleGenerator, decode_loop
    from runtime.protocol import GenerationConfig, GenerationRequest
    from runtime.scenes import scenes

    std = BundleGenerator.open(new_dir, threads=threads, decoder="standard")
    fused = BundleGenerator.open(new_dir, threads=threads, decoder="fused")
    images = [sc.image for sc in scenes("test", 1)]
    requests = [GenerationRequest(q, images[0] if i == 0 else None) for i, q in enumerate(CHECK_QUESTIONS)]
    config = GenerationConfig(max_new_tokens=new_tokens)
    name, what = "fused vs standard decoder", f"{len(requests)} prompts"
    prefill, greedy = [], []
    for r in requests:
        embeds = std.request_embeds(r)
        a = std.backend.decode(embeds[None], np.ones((1, len(embeds)), np.int64), np.arange(len(embeds))[None],
                               std.backend.empty_cache(1))[0]
        b = fused.backend.decode(embeds[None], np.ones((1, len(embeds)), np.int64), np.arange(len(embeds))[None],
                                 fused.backend.empty_cache(1, capacity=len(embeds)))[0]
        prefill.append(compare_arrays(name, what, a, b))
        [(ta, _)], _ = decode_loop(std.backend, [embeds], config, std.spec.eos_token_ids, std.spec.pad_token_id)
        [(tb, _)], _ = decode_loop(fused.backend, [embeds], config, fused.spec.eos_token_ids, fused.spec.pad_token_id)
        greedy.append(compare_tokens(name, what, ta, tb))
    tokens = combine(name, what, greedy)
    return {"prompts": len(requests), "identical_greedy": sum(g.first_difference is None for g in greedy),
            "max_abs_dlogit_prefill": combine(name, what, prefill).max_abs_diff,
            "tokens_before_first_difference": round(tokens.top1_agreement * tokens.positions),
            "tokens": tokens.positions, "new_tokens": new_tokens, "evaluated_with": "onnxruntime CPU"}


def refuse_outside_tolerance(result: dict[str, Any], precision: str) -> None:
    """Raise (so nothing is written) when check()'s result is outside TOLERANCE[precision]; records the tolerance."""
    tol = TOLERANCE[precision]
    result["tolerance"] = dict(tol)
    worst = result.get("max_abs_dlogit_prefill", result.get("max_abs_diff"))
    bad = []
    if worst is None or not worst <= tol["max_abs_dlogit"]:  # NaN is refused too
        bad.append(f"max |d logit| at prefill {worst} > {tol['max_abs_dlogit']:g}")
    if tol["identical_greedy"] and result["identical_greedy"] != result["prompts"]:
        bad.append(f"greedy tokens identical on {result['identical_greedy']}/{result['prompts']} prompts")
    if bad:
        raise UserError(f"the fused {precision} decoder does not match the bundle's standard decoder "
                        f"({'; '.join(bad)}); nothing was written")


def _recorded_weights(checkpoint: str | os.PathLike) -> str | None:
    """The hooked-MLP weights hash a toolchain-written checkpoint records in its manifest (None for others)."""
    from runtime.artifacts import MANIFEST, read_manifest

    path = Path(checkpoint)
    if not (path / MANIFEST).is_file():
        return None
    model = read_manifest(path, verify=False).get("model")
    return model.get("mlp_weights_sha256") if isinstance(model, dict) else None


def check_checkpoint(bundle: Bundle, checkpoint: str | os.PathLike, weights_sha256: str | None) -> None:
    """Refuse a checkpoint whose hooked MLP weights are not those of the model the bundle was exported from."""
    want = (bundle.manifest.get("model") or {}).get("mlp_weights_sha256")
    if want and weights_sha256 and want != weights_sha256:
        raise UserError(f"--checkpoint {checkpoint} is not the model {bundle.root} was exported from (hooked MLP "
                        f"weights {weights_sha256[:12]}... vs {want[:12]}...; a folded bundle needs its folded "
                        "checkpoint); pass the checkpoint the bundle was exported from")


def add_fused_decoder(bundle_dir: str | os.PathLike, checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                      precision: str | None = None, builder_python: str | None = None,
                      prebuilt: str | os.PathLike | None = None, overwrite: bool = False,
                      threads: int | None = None, weights: str = "auto") -> dict[str, Any]:
    """Write a copy of the bundle with a fused decoder; returns its manifest. `prebuilt`: a directory the builder
    already wrote (model.onnx + genai_config.json) for this checkpoint, instead of running it (an fp32 build for
    weights "gguf"). `weights` (int4): "gguf" converts the builder's float32 graph to the GGUF's own blocks, as
    the bundle's standard decoder has them (auto for a bundle of compile.quantize's gguf method); "bundle" puts the
    standard decoder's own MatMulNBits blocks into it (auto for the gptq method); "builder" keeps the builder's own
    int4 (RTN, which cannot land on the GGUF's grid)."""
    from compile.quantize.derive import derive_bundle
    from compile.quantize.derive import copy_graph as copy_bundle_graph
    from runtime.artifacts import check_output
    from runtime.bundle import load_bundle

    check_output(out_dir, [bundle_dir, checkpoint, prebuilt], kind=BUNDLE_KIND)
    src = load_bundle(bundle_dir)
    check_checkpoint(src, checkpoint, _recorded_weights(checkpoint))
    precision = precision or src.precision
    if precision not in PRECISIONS:
        raise UserError(f"a fused decoder is built in fp32 or int4, not {precision!r}; pass --precision")
    if src.spec.fused_decoder is not None:
        raise UserError(f"{bundle_dir} already has a fused decoder")
    why = cannot_fuse(src.spec, precision)
    if why:
        raise UserError(why)
    method = src.quantization.get("method")
    if weights == "auto":
        weights = {"gguf-exact": "gguf", "gptq": "bundle"}.get(method, "builder") if precision == "int4" else "builder"
    if weights not in ("gguf", "bundle", "builder"):
        raise UserError(f"weights must be gguf, bundle, builder or auto, not {weights!r}")
    if weights == "gguf" and method != "gguf-exact":
        raise UserError(f"{bundle_dir} does not hold GGUF blocks (precision method {method!r}); use --weights builder")
    if weights == "bundle" and (precision != "int4" or src.precision != "int4" or method not in BUNDLE_BLOCK_METHODS):
        raise UserError(f"--weights bundle copies the MatMulNBits blocks of an int4 bundle of the "
                        f"{' or '.join(BUNDLE_BLOCK_METHODS)} method into an int4 fused decoder (this bundle: "
                        f"{src.precision}, method {method!r}; a gguf-exact bundle's offsets need --weights gguf)")
    gguf = None
    if weights == "gguf":
        from compile.quantize.registry import method

        gguf = method("gguf-exact").blocks_of(src)
    elif weights == "bundle":
        from compile.quantize.graphs import load_graph
        from compile.quantize.gptq import DecoderBlocks

        gguf = (DecoderBlocks(load_graph(src.graph_path("decoder"))), None, src.quantization.get("accuracy_level") or 4)
    extra = rtn_options(src.quantization) if weights == "builder" and precision == "int4" else []
    python = builder_python or default_builder_python()
    if prebuilt is None:
        why = builder_missing(python)
        if why:
            raise UserError(f"onnxruntime-genai's builder is not importable with {python} ({why}); scripts/setup "
                            "installs it into .venv (onnxruntime-genai==0.15.2), or pass --builder-python")

    def transform(bundle: Bundle, out: Path) -> dict[str, Any]:
        for graph in GRAPHS:
            copy_bundle_graph(bundle, graph, out)
        with tempfile.TemporaryDirectory(prefix="sgm-fused-") as tmp:
            tmp_path = Path(tmp)
            if prebuilt is not None:
                graph_dir, source = Path(prebuilt), {"checkpoint": str(checkpoint), "prebuilt": str(prebuilt)}
            else:
                source = extract_language_model(checkpoint, tmp_path / "lm")
                check_checkpoint(bundle, checkpoint, source.get("mlp_weights_sha256"))
                graph_dir = tmp_path / "graph"
                run_builder(python, tmp_path / "lm", graph_dir, "fp32" if gguf else precision, tmp_path / "cache",
                            extra)
            section = decoder_section(graph_dir)
            stats = copy_graph(graph_dir, out, gguf)
            if stats:
                section["contrib_ops"] = sorted(set(section["contrib_ops"]) | {"MatMulNBits"})
        return {"fused_decoder": {**section, "builder": "onnxruntime_genai.models.builder",
                                  "builder_version": builder_version(python) if prebuilt is None else None,
                                  "precision": precision,
                                  "extra_options": [*EXTRA_OPTIONS, *extra], "source": source,
                                  "weights": stats or {"method": f"builder {precision}"}}}

    recorded: dict[str, Any] = {}

    def transform_and_record(bundle: Bundle, out: Path) -> dict[str, Any]:
        fields = transform(bundle, out)
        recorded.update(fields)
        return fields

    def finish(tmp: Path) -> dict[str, Any]:
        """derive_bundle copied the source's runtime.json: add the section, re-hash, then check."""
        from runtime.artifacts import read_manifest, write_manifest

        f = recorded["fused_decoder"]
        config = json.loads((tmp / RUNTIME_FILE).read_text())
        config["fused_decoder"] = {k: f[k] for k in RUNTIME_KEYS}
        (tmp / RUNTIME_FILE).write_text(json.dumps(config, indent=2) + "\n")
        manifest = read_manifest(tmp, verify=False)
        write_manifest(tmp, manifest.pop("kind"), **{k: v for k, v in manifest.items() if k != "files"})
        result = check(tmp, threads=threads)
        refuse_outside_tolerance(result, precision)
        return result

    return derive_bundle(src.root, out_dir, transform_and_record, overwrite=overwrite, after=finish,
                         inputs=[checkpoint, prebuilt])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compile.fused", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="an fp32 or int4 bundle (compile.export / quantize)")
    p.add_argument("--checkpoint", required=True,
                   help="the checkpoint the bundle was exported from (the folded, detoxified one for a detoxified "
                        "bundle), or a zoo name")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--precision", choices=PRECISIONS, help="default: the bundle's (float32 -> fp32, int4 -> int4)")
    p.add_argument("--builder-python", help="interpreter with onnxruntime-genai's builder, torch and transformers "
                                            "(default: this one; scripts/setup installs the builder into .venv)")
    p.add_argument("--prebuilt", type=Path, help="use this builder output directory instead of running the builder "
                                                 "(its fp32 build for --weights gguf)")
    p.add_argument("--weights", choices=("auto", "gguf", "bundle", "builder"), default="auto",
                   help="int4: the GGUF's own blocks converted from the builder's fp32 graph (auto for a gguf-method "
                        "bundle), the bundle's standard decoder's blocks put into that graph (auto for a gptq bundle), "
                        "or the builder's own int4 RTN")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for the check")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    manifest = add_fused_decoder(args.bundle, args.checkpoint, args.out, args.precision, args.builder_python,
                                 args.prebuilt, args.overwrite, args.threads, args.weights)
    print(summary(manifest, args.out))
    return 0


def summary(manifest: dict[str, Any], out: str | os.PathLike) -> str:
    """What was written and how the fused decoder compared with the standard one (from the bundle's manifest)."""
    f, c = manifest["fused_decoder"], manifest.get("check", {})
    text = (f"bundle with a fused {f['precision']} decoder ({f['weights']['method']}) written to {out} "
            f"({', '.join(f['contrib_ops'])}; logits {f['logits_positions']}, kv buffer {f['kv_buffer']})")
    if c:
        text += (f"\n  vs the standard decoder: identical greedy tokens on {c['identical_greedy']}/{c['prompts']} "
                 f"prompts ({c['tokens_before_first_difference']}/{c['tokens']} tokens before the first difference), "
                 f"max |dlogit| at prefill {c['max_abs_dlogit_prefill']:.3g}")
    return text


if __name__ == "__main__":
    sys.exit(cli.run(main))
