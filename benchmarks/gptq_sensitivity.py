"""Which Linears' GPTQ error costs the most: held-out NLL of a float32 bundle with GPTQ's 4-bit weights put in
for some Linears and the float (= the GGUF's exact) weights kept for the rest.

    python benchmarks/gptq_sensitivity.py --bundle build/gemma-llava/bundle --cache build/gptq-sens [--groups]
        [--variant "NAME=PATTERN[,PATTERN...][@HEAD_BLOCK]" ...]

Each Linear's GPTQ blocks are fitted once (compile.quantize.gptq, on the Hessians of the gptq method's default 128
calibration prompts, cached in --cache with the dequantized blocks), then each variant is one ONNX Runtime session of
the bundle's standard decoder whose weights are overridden (SessionOptions.add_initializer) and scored teacher-forced
on 16 corpus paragraphs that neither the calibration (32-127) nor the perplexity and checks (0-31) use. Float
compute: this measures the weights alone, not MatMulNBits' int8 activations. A variant keeps exact the Linears whose
node name contains one of its patterns and quantizes the rest (the lm_head too, in blocks of HEAD_BLOCK, default
32); `--groups` adds "all but one module type" and "all but one layer" rows. docs/quantization.md ("Mixed GPTQ")
chose gemma-llava's exact modules with it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compile.quantize.calibration import calibration_items, decoder_feeds, prefill_feed  # noqa: E402
from compile.quantize.graphs import is_lm_head, load_graph, weight_matmuls  # noqa: E402
from compile.quantize.gptq import gptq_blocks, hessians  # noqa: E402
from compile.quantize.spec import CALIBRATION_ITEMS  # noqa: E402
from compile.quantize.methods import GPTQ_IMAGE_SHARE  # noqa: E402
from runtime import cli  # noqa: E402
from runtime.bundle import load_bundle  # noqa: E402
from runtime.generate import BundleGenerator  # noqa: E402
from runtime.mmtoxicqa import corpus  # noqa: E402

HELD_OUT = (176, 192)  # corpus paragraphs scored: past calibration's 32..127 and the checks' 0..31
MAX_TOKENS = 160
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _key(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:16]


def gptq_weights(bundle: Path, cache: Path, head_blocks: set[int]) -> dict[str, tuple[str, dict[int, Path]]]:
    """node name -> (its weight initializer, {block size: .npy of GPTQ's dequantized weight [K, N]}), cached."""
    from onnx import numpy_helper
    from tqdm import tqdm

    src = load_bundle(bundle)
    model = load_graph(src.graph_path("decoder"))
    linears = weight_matmuls(model)
    cache.mkdir(parents=True, exist_ok=True)
    missing = {n.input[0] for n in linears if not (cache / f"h-{_key(n.input[0])}.npy").exists()}
    if missing:
        items = CALIBRATION_ITEMS["gptq"]
        n_img = items // GPTQ_IMAGE_SHARE
        h, _ = hessians(model, decoder_feeds(bundle, calibration_items(n_img, items - n_img)), missing)
        for name, v in h.items():
            np.save(cache / f"h-{_key(name)}.npy", v)
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in tqdm(linears, desc="GPTQ", unit="linear", leave=False):
        sizes = head_blocks if is_lm_head(node.name) else {32}
        files = {bs: cache / f"w{bs}-{_key(node.name)}.npy" for bs in sizes}
        for bs, f in files.items():
            if not f.exists():
                w = numpy_helper.to_array(inits[node.input[1]]).T
                b = gptq_blocks(w, np.load(cache / f"h-{_key(node.input[0])}.npy"), block_size=bs)
                np.save(f, np.ascontiguousarray(b.dequantize().T.astype(np.float32)))
        out[node.name] = (node.input[1], files)
    return out


def held_out_feeds(bundle: Path) -> list[tuple[dict, np.ndarray]]:
    """(prefill feed, token ids) of each held-out corpus paragraph, cut to MAX_TOKENS tokens."""
    gen = BundleGenerator.open(bundle)
    texts = corpus.load_corpus(corpus.default_corpus(), n_texts=HELD_OUT[1])[HELD_OUT[0]:]
    ids = [gen.tokenizer.encode(text)[:MAX_TOKENS] for text in texts]
    return [(prefill_feed(gen, i, []), np.asarray(i)) for i in ids]


def mean_nll(path: str, logits: str, feeds: list, overrides: dict[str, Path]) -> float:
    """Mean next-token NLL over `feeds` with the initializers in `overrides` replaced by the arrays saved there."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    held = []
    for init, f in overrides.items():
        held.append(ort.OrtValue.ortvalue_from_numpy(np.load(f)))
        so.add_initializer(init, held[-1])
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    total, count = 0.0, 0
    for feed, ids in feeds:
        z = session.run([logits], feed)[0][0, :-1].astype(np.float64)
        m = z.max(-1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(-1))
        total += float((lse - z[np.arange(len(ids) - 1), ids[1:]]).sum())
        count += len(ids) - 1
    return total / count


def parse_variant(text: str) -> tuple[str, tuple[str, ...], int]:
    name, _, rest = text.partition("=")
    rest, _, head = rest.partition("@")
    if not name or not (rest or head) or head not in ("", "16", "32", "64", "128"):
        raise SystemExit(f"--variant {text!r}: expected NAME=PATTERN[,PATTERN...][@HEAD_BLOCK], HEAD_BLOCK 16, 32, 64 "
                         "or 128")
    return name, tuple(p for p in rest.split(",") if p), int(head or 32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="float32 bundle (its standard decoder is scored)")
    p.add_argument("--cache", required=True, type=Path, help="directory for the Hessians and GPTQ weights")
    p.add_argument("--variant", action="append", default=[], help="NAME=PATTERN[,PATTERN...][@HEAD_BLOCK]")
    p.add_argument("--groups", action="store_true", help="add all-but-one-module-type and all-but-one-layer rows")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    weights = gptq_weights(args.bundle, args.cache, {32} | {v[2] for v in variants})
    feeds = held_out_feeds(args.bundle)
    src = load_bundle(args.bundle)
    path, logits = str(src.graph_path("decoder")), src.spec.decoder.logits
    layers = sorted({int(n.split("layers.")[1].split("/")[0]) for n in weights if "layers." in n})

    def quantized(exact: tuple[str, ...], head: int = 32, head_too: bool = True) -> dict[str, Path]:
        return {init: files[head if is_lm_head(n) else 32] for n, (init, files) in weights.items()
                if not any(pat in n for pat in exact) and (head_too or not is_lm_head(n))}

    rows = [("float (every Linear exact)", {}), ("GPTQ everywhere", quantized(())),
            ("GPTQ layers, lm_head exact", quantized((), head_too=False))]
    if args.groups:
        rows += [(f"all but {m}", quantized((f"/{m}/",))) for m in MODULES]
        rows += [(f"all but layer {i}", quantized((f"layers.{i}/",))) for i in layers]
    rows += [(name, quantized(pats, head)) for name, pats, head in variants]
    print(f"{sum(len(i) - 1 for _, i in feeds)} held-out positions (corpus paragraphs {HELD_OUT[0]}-{HELD_OUT[1] - 1})")
    print("| variant | Linears quantized | mean NLL | vs float (ppl x) |\n|---|---|---|---|")
    results, base = {}, None
    for label, overrides in rows:
        t = time.perf_counter()
        nll = mean_nll(path, logits, feeds, overrides)
        base = nll if base is None else base
        results[label] = nll
        print(f"| {label} | {len(overrides)} | {nll:.4f} | {np.exp(nll - base):.3f} |  ({time.perf_counter() - t:.0f} s)",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
