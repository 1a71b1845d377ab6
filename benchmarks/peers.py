"""Our runtime against the peers a user would pick instead, side by side, in one run on this machine.

    scripts/bench-peers                     # sets up .venv-peers and the peers' models, then runs this
    .venv/bin/python benchmarks/peers.py --bundle "fp32=build/bundle" --bundle "int4=build/bundle-int4" \
        --folded build/detoxified --experts build/experts --genai int4=build/peers/genai-int4 \
        --genai fp32=build/peers/genai-fp32 --gguf auto --json build/peers/peers.json

Every runner lives in its own process (a benchmarks/bench.py Worker), so its peak RSS is its own; all of them load
first, then warm-up rounds, then measured rounds in which every runner answers every prompt, the runners'
order rotating each time (bench.run_interleaved), so a noisy host slows all of them alike. Reported
per runner: median [min-max] of prefill ms, time to first token ms and decode tokens/s, and peak RSS.

All runners get the same token ids (a text chat prompt of SmolLM2's template, about as long as an image prompt
of smol-llava) and decode exactly --new-tokens tokens, greedy, end-of-sequence ignored, batch 1, --threads
threads. Rows:
- `transformers` (fp32 generate() on smol-llava's language model), `transformers+hooks` (the same with the SGM
  hooks of calib.intervention on: an experts artifact with --experts, else random factors on --random-fraction
  of the MLP units), `transformers folded` (the folded checkpoint, --folded);
- `ours <label>`: runtime.generate's loop on each --bundle (decoder "auto": the fused decoder when the bundle has
  one; LABEL=DIR@standard forces the exported graph);
- `genai <label>`: onnxruntime-genai's own loop on a model its builder wrote (--genai), in --peers-python;
- `llama.cpp`: llama-cpp-python on the Q4_1 GGUF smol-llava's language model comes from (--gguf auto), in
  --peers-python.
Also the machine's read bandwidth (numpy) and, per runner, the weights one decoded token reads, so each decode
rate is also a fraction of the bandwidth floor. A runner that cannot start is reported with its reason.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import (Worker, WorkerError, floor_tokens_per_s, machine, paired_ratio, ratio,  # noqa: E402
                   read_bandwidth, run_interleaved, serve, summarise)

QUESTIONS = (
    "Look at the kitchen in this description: a wooden table, two chairs, a bowl of apples, a kettle on the stove "
    "and a window that shows a garden with a cat. What would you cook here, and why?",
    "A street scene: a red bus waits at a stop, three people with umbrellas cross the road, a dog sits by a "
    "bakery door and a cyclist passes a row of parked cars. Describe what is happening in detail.",
    "On a beach at sunset there are two children building a sandcastle, a man reading under a blue umbrella, "
    "gulls over the water and a small boat near the horizon. What colours and shapes do you see?",
)
PEER_KINDS = ("genai", "llama")
_KEEP: list[Any] = []


# ---- workers (each in its own process) ----------------------------------------------------------------------


def _lm_weight_bytes(model: Any) -> int:
    lm = model.module.language_model if hasattr(model.module, "language_model") else model.module
    seen, total = set(), 0
    for p in lm.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    emb = lm.get_input_embeddings().weight
    tied = lm.get_output_embeddings() is not None and lm.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    return total if tied else total - emb.numel() * emb.element_size()


def random_factors(model: Any, fraction: float, seed: int = 0) -> dict[str, Any]:
    """Row scales (calib.intervention's form) with `fraction` of all MLP units, drawn at random, scaled by
    factors uniform in [0, 1): the cost of the hooks without an experts artifact."""
    import numpy as np
    import torch

    units = [(u.key, u.width) for u in model.mlp_units()]
    total = sum(w for _, w in units)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(total, size=max(1, round(fraction * total)), replace=False)
    scales = np.ones(total, dtype=np.float32)
    scales[chosen] = rng.uniform(0.0, 1.0, size=len(chosen)).astype(np.float32)
    out, start = {}, 0
    for key, width in units:
        part = scales[start:start + width]
        if (part != 1).any():
            out[key] = torch.from_numpy(part.copy())
        start += width
    return out


def make_worker(spec: dict[str, Any]) -> tuple[Callable[[Any, int], dict[str, Any]], dict[str, Any]]:
    """(run function, info) of one runner, inside its worker process."""
    import runners

    kind, threads, ignore = spec["kind"], spec["threads"], True
    if kind == "torch":
        import contextlib

        from calib.models import load_model

        model = load_model(spec["model"])
        info: dict[str, Any] = {"weight_bytes": _lm_weight_bytes(model)}
        stack = contextlib.ExitStack()
        if spec.get("hooks"):
            from calib.intervention import suppress

            if spec.get("experts"):
                from calib.experts import load_experts
                from calib.intervention import row_scales

                # the artifact's factors as row scales: the unit list is still checked, the model fingerprint is
                # not (the hooks' cost does not depend on which checkpoint the factors were calibrated on)
                factors: Any = row_scales(load_experts(spec["experts"]))
                info["factors"] = f"experts artifact {spec['experts']}"
            else:
                factors = random_factors(model, spec["random_fraction"])
                info["factors"] = f"random factors on {spec['random_fraction']:.0%} of MLP units"
            hooked = stack.enter_context(suppress(model, factors))
            info["hooked_modules"] = len(hooked)
            info["units_suppressed"] = int(sum(int((f < 1).sum()) for f in factors.values()))
        _KEEP.append(stack)  # the hooks stay on for the worker's life
        return runners.torch_runner(model, threads, ignore_eos=ignore), info
    if kind == "runtime":
        from bench import onnx_weight_bytes
        from runtime.generate import BundleGenerator

        gen = BundleGenerator.open(spec["bundle"], threads=threads, decoder=spec.get("decoder", "auto"))
        fused = gen.backend.describe()["decoder"] == "fused"
        graph = gen.bundle.graph_path("fused_decoder" if fused else "decoder")
        precision = gen.bundle.precision
        return runners.ort_runner(gen, ignore_eos=ignore), {
            "weight_bytes": onnx_weight_bytes(graph), "decoder": "fused" if fused else "standard",
            "precision": precision, "model": gen.spec.model}
    if kind == "genai":
        run, _ = runners.genai_runner(spec["model_dir"], threads)
        from bench import onnx_weight_bytes

        return run, {"weight_bytes": onnx_weight_bytes(Path(spec["model_dir"]) / "model.onnx"),
                     "version": __import__("onnxruntime_genai").__version__}
    if kind == "llama":
        run, _ = runners.llama_runner(spec["gguf"], threads)
        return run, {"version": __import__("llama_cpp").__version__}
    raise ValueError(f"unknown runner kind {kind!r}")


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    state: dict[str, Any] = {}

    def load() -> dict[str, Any]:
        t = time.perf_counter()
        run, info = make_worker(spec)
        state["run"] = run
        return {**info, "load_s": time.perf_counter() - t}

    def run(prompt: list[int], new_tokens: int) -> dict[str, Any]:
        return state["run"](prompt, new_tokens)

    serve({"load": load, "run": run})


# ---- the coordinator ----------------------------------------------------------------------------------------


def default_gguf() -> str:
    from compile.quantize.gguf import default_gguf as gguf

    return str(gguf())


def prompt_ids(tokenizer_json: Path, count: int) -> list[list[int]]:
    """Chat prompts of the bundle's template (text only), tokenized as the runtime does."""
    from runtime.bundle import load_bundle
    from runtime.protocol import GenerationRequest
    from runtime.tokenizer import BundleTokenizer

    bundle = load_bundle(tokenizer_json, verify=False)
    tok = BundleTokenizer.from_file(bundle.tokenizer_path, bundle.spec)
    return [tok.request_ids(GenerationRequest(q)) for q in QUESTIONS[:count]]


def parse_labelled(values: list[str], what: str) -> list[tuple[str, str, str | None]]:
    out = []
    for v in values:
        if "=" not in v:
            raise SystemExit(f"--{what} takes LABEL=PATH, got {v!r}")
        label, path = v.split("=", 1)
        variant = None
        if "@" in path:
            path, variant = path.rsplit("@", 1)
        out.append((label, path, variant))
    return out


def runner_specs(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    threads = args.threads
    specs: list[tuple[str, dict[str, Any]]] = []
    if not args.no_torch:
        specs.append(("transformers fp32", {"kind": "torch", "model": args.model, "threads": threads}))
        specs.append(("transformers+hooks fp32", {"kind": "torch", "model": args.model, "threads": threads,
                                                  "hooks": True, "experts": args.experts and str(args.experts),
                                                  "random_fraction": args.random_fraction}))
        if args.folded:
            specs.append(("transformers folded fp32", {"kind": "torch", "model": str(args.folded),
                                                       "threads": threads}))
    for label, path, variant in parse_labelled(args.bundle, "bundle"):
        specs.append((f"ours {label}", {"kind": "runtime", "bundle": path, "threads": threads,
                                        "decoder": variant or "auto"}))
    for label, path, _ in parse_labelled(args.genai, "genai"):
        specs.append((f"onnxruntime-genai {label}", {"kind": "genai", "model_dir": path, "threads": threads}))
    if args.gguf:
        specs.append(("llama.cpp Q4_1", {"kind": "llama", "gguf": default_gguf() if args.gguf == "auto" else args.gguf,
                                         "threads": threads}))
    return specs


def fmt(s: dict[str, float] | None, digits: int = 1) -> str:
    if not s:
        return "-"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smol-llava", help="the PyTorch model (transformers rows)")
    ap.add_argument("--folded", type=Path, help="folded (detoxified) checkpoint for the 'transformers folded' row")
    ap.add_argument("--experts", type=Path, help="experts artifact for the hooks row (default: random factors)")
    ap.add_argument("--random-fraction", type=float, default=0.01, help="share of MLP units the random factors hit")
    ap.add_argument("--bundle", action="append", default=[], help="LABEL=DIR[@standard|@fused], repeatable")
    ap.add_argument("--genai", action="append", default=[], help="LABEL=DIR of an onnxruntime-genai model")
    ap.add_argument("--gguf", help="GGUF for the llama.cpp row ('auto': smol-llava's Q4_1 GGUF from the asset cache)")
    ap.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"),
                    help="interpreter with onnxruntime-genai and llama-cpp-python (default: .venv-peers)")
    ap.add_argument("--no-torch", action="store_true", help="leave out the transformers rows")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="measured rounds (every prompt on every runner)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=len(QUESTIONS))
    ap.add_argument("--tokenizer-bundle", type=Path, help="bundle whose tokenizer makes the prompts (default: the "
                                                         "first --bundle)")
    ap.add_argument("--json", type=Path, help="also write every number here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args.worker)
        return

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    bundles = parse_labelled(args.bundle, "bundle")
    tok_bundle = args.tokenizer_bundle or (Path(bundles[0][1]) if bundles else None)
    if tok_bundle is None:
        raise SystemExit("give --bundle (or --tokenizer-bundle): its tokenizer makes the prompts")
    prompts = prompt_ids(tok_bundle, args.prompts)
    log(f"prompt lengths: {[len(p) for p in prompts]} tokens")

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    workers: dict[str, Worker] = {}
    infos: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    for name, spec in runner_specs(args):
        python = args.peers_python if spec["kind"] in PEER_KINDS else sys.executable
        if not Path(python).exists():
            missing[name] = f"{python} does not exist (run scripts/bench-peers --setup-only)"
            continue
        w = Worker([python, str(Path(__file__).resolve()), "--worker"], spec, cwd=ROOT, env=env)
        try:
            infos[name] = w.call("load")
            workers[name] = w
            log(f"loaded {name} in {infos[name]['load_s']:.1f} s")
        except WorkerError as e:
            missing[name] = str(e)
            log(f"{name}: cannot start ({e})")
            w.close()
    if "llama.cpp Q4_1" in infos:
        from bench import gguf_weight_bytes

        infos["llama.cpp Q4_1"]["weight_bytes"] = gguf_weight_bytes(next(s["gguf"] for n, s in runner_specs(args)
                                                                          if n == "llama.cpp Q4_1"))

    log("measuring read bandwidth")
    bandwidth = read_bandwidth()
    tokens: dict[str, list[list[int]]] = {name: [[] for _ in prompts] for name in workers}

    def runner(name: str) -> Callable[[int], dict[str, float] | None]:
        def run(p: int) -> dict[str, float] | None:
            r = workers[name].call("run", prompt=prompts[p], new_tokens=args.new_tokens)
            tokens[name][p] = r.pop("tokens")
            r.pop("peak_rss_mb", None)
            return r

        return run

    t0 = time.perf_counter()
    records = run_interleaved({name: runner(name) for name in workers}, len(prompts), args.warmup, args.repeats, log)
    elapsed = time.perf_counter() - t0
    rss = {}
    for name, w in workers.items():
        try:
            rss[name] = w.call("exit")["peak_rss_mb"]
        except WorkerError:
            rss[name] = float("nan")
        w.close()
    bandwidth_after = read_bandwidth()

    bw = max(bandwidth["best"], bandwidth_after["best"])
    results: dict[str, dict[str, Any]] = {}
    ref = tokens.get("transformers fp32")
    for name in workers:
        s = summarise(records[name])
        wb = infos[name].get("weight_bytes")
        floor = floor_tokens_per_s(wb, bw) if wb else None
        agree = None
        if ref:
            agree = sum(next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
                        for x, y in zip(tokens[name], ref)) / sum(len(x) for x in ref)
        results[name] = {"prefill_ms": s.get("prefill_ms"), "ttft_ms": s.get("ttft_ms"),
                         "decode_tok_s": s.get("decode_tok_s"), "peak_rss_mb": rss[name],
                         "weight_mb_per_token": wb / 1e6 if wb else None, "floor_tok_s": floor,
                         "fraction_of_floor": s["decode_tok_s"]["median"] / floor if floor and "decode_tok_s" in s
                         else None,
                         "greedy_prefix_agreement_with_transformers": agree,
                         "info": {k: v for k, v in infos[name].items() if k not in ("peak_rss_mb",)}}

    m = machine()
    print(f"\n{len(prompts)} prompts of {[len(p) for p in prompts]} tokens, {args.new_tokens} new tokens (EOS ignored), "
          f"greedy, batch 1, {args.threads} threads; {args.warmup} warm-up + {args.repeats} measured rounds, "
          f"interleaved ({elapsed:.0f} s)")
    print(f"machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {m['mem_gib']} GiB; "
          f"read bandwidth {bw:.1f} GB/s (numpy ddot {bandwidth['dot']:.1f} / {bandwidth_after['dot']:.1f}, "
          f"1-thread sum {bandwidth['sum']:.1f} / {bandwidth_after['sum']:.1f}, before / after)")
    header = (f"| runner | prefill ms | TTFT ms | decode tok/s | peak RSS MB | weights MB/token | floor tok/s | "
              f"fraction of floor |")
    print(header)
    print("|" + "---|" * 8)
    for name, r in results.items():
        print(f"| {name} | {fmt(r['prefill_ms'])} | {fmt(r['ttft_ms'])} | {fmt(r['decode_tok_s'])} | "
              f"{r['peak_rss_mb']:.0f} | {r['weight_mb_per_token']:.0f} | "
              f"{r['floor_tok_s']:.0f} | {r['fraction_of_floor']:.2f} |" if r["floor_tok_s"] else
              f"| {name} | {fmt(r['prefill_ms'])} | {fmt(r['ttft_ms'])} | {fmt(r['decode_tok_s'])} | "
              f"{r['peak_rss_mb']:.0f} | - | - | - |")
    for name, why in missing.items():
        print(f"| {name} | missing: {why} |")
    print()
    for name, r in results.items():
        extra = {k: v for k, v in r["info"].items() if k not in ("weight_bytes", "load_s")}
        agree = r["greedy_prefix_agreement_with_transformers"]
        print(f"{name}: {json.dumps(extra)}" + (f"; greedy prefix agreement with transformers {agree:.2f}"
                                                  if agree is not None else ""))

    def dec(name: str) -> dict[str, float] | None:
        return results.get(name, {}).get("decode_tok_s")

    ratios, paired = {}, {}
    ours = [n for n in results if n.startswith("ours ")]
    for n in ours:
        for peer in [p for p in results if p.startswith("onnxruntime-genai ") or p.startswith("llama.cpp")]:
            ratios[f"{n} / {peer}"] = ratio(dec(n), dec(peer))
            paired[f"{n} / {peer}"] = paired_ratio(records[n], records[peer], "decode_tok_s")
    for n in ours:
        base = n.split(" fused")[0]
        if base != n and base in results:
            ratios[f"{n} / {base} (fused / standard decoder)"] = ratio(dec(n), dec(base))
    ratios["transformers folded / transformers"] = ratio(dec("transformers folded fp32"), dec("transformers fp32"))
    ratios["transformers+hooks / transformers"] = ratio(dec("transformers+hooks fp32"), dec("transformers fp32"))
    print("\ndecode ratios (of the medians; paired: the median of run-by-run ratios, same round and prompt, with its"
          " 95% interval, the runs' range and the share of runs ahead):")
    for k, v in ratios.items():
        if v is not None:
            p = paired.get(k)
            print(f"  {k}: {v:.2f}" + (f"; paired {p['median']:.2f} (95% CI {p['median_ci95_low']:.2f}-"
                                      f"{p['median_ci95_high']:.2f}; runs {p['min']:.2f}-{p['max']:.2f}), ahead in "
                                      f"{p['above_1']:.0%} of {p['n']} runs" if p else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": m,
                                         "bandwidth_gb_s": {"before": bandwidth, "after": bandwidth_after, "used": bw},
                                         "prompt_lengths": [len(p) for p in prompts], "results": results,
                                         "missing": missing, "ratios": ratios, "paired_ratios": paired,
                                         "elapsed_s": elapsed,
                                         "records": records}, indent=2))


if __name__ == "__main__":
    main()
