"""Decode speed of the native host against onnxruntime-genai and the Python runtime, paired as BENCHMARKS.md
measures (benchmarks/bench.py: interleaved rounds, rotated order, run-by-run ratios with a 95% interval of their
median), plus each runtime's startup time and peak memory.

    .venv/bin/python native/bench_decode.py --bundle B-fused --genai build/peers/genai-fp32 [--repeats 10]

Every runner decodes the same prompts (benchmarks/peers.py's chat questions, tokenized by the bundle) for
`--new-tokens` tokens with end-of-sequence ignored, batch 1, `--threads` intra-op threads: the native host through
its JSON lines (its own prefill/decode timings), the Python runtime (benchmarks.runners.ort_runner), genai's own
loop (benchmarks.runners.genai_runner). Startup: process start to the first answerable request (bundle verified,
sessions created), each in a fresh process; peak memory: that process's VmHWM after one 64-token request.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench import paired_ratio, run_interleaved, summarise  # noqa: E402
from runners import genai_runner, ort_runner  # noqa: E402

from runtime.native import find_host  # noqa: E402

PY_STARTUP = """
import resource, sys, time
t0 = time.perf_counter()
from runtime.generate import BundleGenerator
from runtime.protocol import GenerationConfig, GenerationRequest
g = BundleGenerator.open(sys.argv[1], threads=int(sys.argv[2]))
t1 = time.perf_counter()
g.generate([GenerationRequest("What is the capital of France?")], GenerationConfig(max_new_tokens=64))
print(t1 - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
"""


def native_startup(host: Path, bundle: str, threads: int) -> tuple[float, float]:
    """(seconds from spawn to the ready line, peak RSS MiB after one 64-token request) of a fresh sgm-run."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(host), "serve", "--bundle", bundle, "--threads", str(threads)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    t1 = time.perf_counter()
    p.stdin.write(json.dumps({"prompt": "What is the capital of France?", "max_new_tokens": 64}) + "\n")
    p.stdin.flush()
    p.stdout.readline()
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{p.pid}/status").read_text().splitlines()
               if line.startswith("VmHWM"))
    p.stdin.close()
    p.wait()
    return t1 - t0, hwm / 1024.0


def python_startup(bundle: str, threads: int) -> tuple[float, float]:
    """(seconds from the runtime's import to an opened BundleGenerator, peak RSS MiB after one 64-token request)."""
    out = subprocess.run([sys.executable, "-c", PY_STARTUP, bundle, str(threads)], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    return float(out[0]), float(out[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="a bundle (with a fused decoder for the genai comparison)")
    ap.add_argument("--genai", help="onnxruntime-genai model directory of the same model (its builder's output)")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    host = find_host()
    if host is None:
        raise SystemExit("the native host is not built: scripts/native-build")

    from peers import prompt_ids
    from runtime.generate import BundleGenerator

    prompts = prompt_ids(Path(args.bundle), args.prompts)
    proc = subprocess.Popen([str(host), "serve", "--bundle", args.bundle, "--threads", str(args.threads)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    describe = json.loads(proc.stdout.readline())["describe"]

    def native(p: int) -> dict:
        proc.stdin.write(json.dumps({"token_ids": prompts[p], "max_new_tokens": args.new_tokens,
                                     "ignore_eos": True}) + "\n")
        proc.stdin.flush()
        r = json.loads(proc.stdout.readline())
        return {"prefill_ms": r["prefill_s"] * 1e3, "decode_tok_s": r["decode_steps"] / r["decode_s"],
                "tokens": r["token_ids"]}

    python = ort_runner(BundleGenerator.open(args.bundle, threads=args.threads), ignore_eos=True)
    runners = {"native": native, "python": lambda p: python(prompts[p], args.new_tokens)}
    if args.genai:
        genai, _ = genai_runner(args.genai, args.threads)
        runners["genai"] = lambda p: genai(prompts[p], args.new_tokens)
    records = run_interleaved(runners, len(prompts), args.warmup, args.repeats,
                              log=lambda m: print(m, file=sys.stderr))
    proc.stdin.close()
    proc.wait()
    same = all(a["tokens"] == b["tokens"] for a, b in zip(records["native"], records["python"]))
    out = {"bundle": args.bundle, "decoder": describe.get("decoder"), "threads": args.threads,
           "new_tokens": args.new_tokens, "prompts": len(prompts), "repeats": args.repeats,
           "native_tokens_equal_python": same,
           "summary": {k: {m: v for m, v in summarise(r).items() if m in ("prefill_ms", "decode_tok_s")}
                       for k, r in records.items()},
           "paired_decode": {f"native/{k}": paired_ratio(records["native"], records[k], "decode_tok_s")
                             for k in records if k != "native"},
           "startup_s_and_peak_rss_mb": {"native": native_startup(host, args.bundle, args.threads),
                                         "python": python_startup(args.bundle, args.threads)}}
    text = json.dumps(out, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
