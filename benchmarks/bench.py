"""Benchmark plumbing shared by benchmarks/decode_speed.py and benchmarks/peers.py (standard library + numpy).

- `summary`: median, min, max and relative spread of repeated measurements; `paired_ratio`: the same over
  run-by-run ratios of two runners measured side by side;
- `rotation` / `run_interleaved`: warm-up rounds, then measured rounds in which every runner runs every prompt,
  the runners' order rotating each round, so a noisy host slows all of them alike;
- `Worker` / `serve`: one runner per child process (its own peak RSS), driven over JSON lines. The child speaks
  on a private copy of its stdout; anything a library prints goes to stderr;
- `read_bandwidth` / `floor_tokens_per_s`: the memory-bandwidth floor (weights read per decoded token over the
  measured read bandwidth), so a decode rate is also a fraction of the machine's limit;
- `onnx_weight_bytes` / `gguf_weight_bytes`: bytes of weights one decoded token reads (an embedding table that is
  only gathered from reads one row, so it does not count unless the output layer also reads it).
"""
from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max, count and spread ((max - min) / median) of repeated measurements."""
    if not values:
        raise ValueError("no measurements to summarise")
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values), "n": len(values),
            "spread": (max(values) - min(values)) / med if med else float("nan")}


def ratio(a: Mapping[str, float] | None, b: Mapping[str, float] | None) -> float | None:
    """Ratio of two summaries' medians (None when either is missing)."""
    if not a or not b or not b.get("median"):
        return None
    return a["median"] / b["median"]


def paired_ratio(a: Sequence[Mapping[str, float]], b: Sequence[Mapping[str, float]],
                 metric: str) -> dict[str, float] | None:
    """Summary of the run-by-run ratios a/b of `metric`, pairing the i-th records of two runners of one
    `run_interleaved` (same round, same prompt: the host's noise of that moment hits both), plus `above_1`, the
    share of runs in which a was ahead. None when either side lacks the metric or the runs do not pair up."""
    if not a or len(a) != len(b):
        return None
    pairs = [x[metric] / y[metric] for x, y in zip(a, b) if x.get(metric) and y.get(metric)]
    if len(pairs) != len(a):
        return None
    lo, hi = median_interval(pairs)
    return {**summary(pairs), "above_1": sum(p > 1 for p in pairs) / len(pairs), "median_ci95_low": lo,
            "median_ci95_high": hi}


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """Distribution-free ~95% confidence interval of the median: the order statistics a binomial(n, 1/2) count
    puts 1.96 standard deviations either side of n/2 (normal approximation; the whole range below 6 values)."""
    v, n = sorted(values), len(values)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = math.floor(n / 2 - half), math.ceil(n / 2 + half)  # 1-based ranks
    return v[max(lo, 1) - 1], v[min(hi, n) - 1]


def rotation(names: Sequence[str], round_index: int) -> list[str]:
    """The runners' order in a round: rotated by one each round, so each runner takes every position in turn."""
    if not names:
        return []
    k = round_index % len(names)
    return list(names[k:]) + list(names[:k])


def run_interleaved(runners: Mapping[str, Callable[[int], Mapping[str, float] | None]], prompts: int, warmup: int,
                    repeats: int, log: Callable[[str], None] | None = None) -> dict[str, list[dict[str, float]]]:
    """Run `runners[name](prompt_index)` for every prompt, runner and round; keep the measured rounds' records.

    A runner returns a record (metric -> value) or None (nothing to record, e.g. no decode step happened).
    """
    records: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    names = list(runners)
    for rnd in range(warmup + repeats):
        for p in range(prompts):
            for name in rotation(names, rnd * prompts + p):
                record = runners[name](p)
                if rnd >= warmup and record is not None:
                    records[name].append(dict(record))
        if log:
            log(f"round {rnd + 1}/{warmup + repeats} done ({'warm-up' if rnd < warmup else 'measured'})")
    return records


def summarise(records: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric, the summary over a runner's records (metrics missing from some records use the others)."""
    metrics: dict[str, list[float]] = {}
    for r in records:
        for k, v in r.items():
            if isinstance(v, (int, float)):
                metrics.setdefault(k, []).append(float(v))
    return {k: summary(v) for k, v in metrics.items()}


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- one runner per process ---------------------------------------------------------------------------------


MARK = "@bench "  # prefix of protocol lines: anything else a child prints is passed on to stderr


class WorkerError(RuntimeError):
    """A worker failed to start or to answer; the message is the worker's own."""


class Worker:
    """A child process running one runner: `call(op, **args)` sends a JSON line and returns the JSON answer."""

    def __init__(self, argv: Sequence[str], spec: Mapping[str, Any], cwd: str | os.PathLike | None = None,
                 env: Mapping[str, str] | None = None, stderr: Any = None):
        self.spec = dict(spec)
        self.proc = subprocess.Popen([*argv, json.dumps(self.spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, cwd=cwd, env=dict(env) if env is not None else None, text=True,
                                     bufsize=1)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise WorkerError(f"worker exited with status {self.proc.returncode}")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=30)
                raise WorkerError(f"worker exited with status {self.proc.returncode} during {op!r}")
            if line.startswith(MARK):
                break
            sys.stderr.write(line)  # something the child printed before serve() took over its stdout
        answer = json.loads(line[len(MARK):])
        if "error" in answer:
            raise WorkerError(answer["error"])
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("exit")
            except (WorkerError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve(handlers: Mapping[str, Callable[..., Mapping[str, Any]]], stdin: Any = None) -> None:
    """The worker's loop: read {"op": ..., args} lines, answer each with a JSON line (or {"error": message}).

    The protocol runs on a duplicate of the original stdout, each line prefixed with MARK; fd 1 then points at
    stderr, so whatever native libraries print cannot corrupt it. "exit" ends the loop; every answer carries the peak RSS so far.
    """
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in stdin or sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        op = msg.pop("op")
        if op == "exit":
            out.write(MARK + json.dumps({"ok": True, "peak_rss_mb": peak_rss_mb()}) + "\n")
            break
        try:
            answer = dict(handlers[op](**msg))
        except Exception as e:  # reported to the coordinator, which marks the row missing with this reason
            answer = {"error": f"{type(e).__name__}: {e}"}
        answer.setdefault("peak_rss_mb", peak_rss_mb())
        out.write(MARK + json.dumps(answer) + "\n")
    out.flush()


# ---- the memory-bandwidth floor -----------------------------------------------------------------------------


def read_bandwidth(mbytes: int = 256, repeats: int = 5) -> dict[str, float]:
    """Measured read bandwidth in GB/s: a float64 dot product of a `mbytes` MB array with itself (BLAS ddot,
    on the threads numpy's BLAS uses) and a single-stream float32 sum; best of `repeats` each."""
    import numpy as np

    a = np.ones(mbytes * 2 ** 20 // 8, dtype=np.float64)
    b = np.ones(mbytes * 2 ** 20 // 4, dtype=np.float32)
    out = {}
    for name, fn, nbytes in (("dot", lambda: float(np.dot(a, a)), a.nbytes),
                             ("sum", lambda: float(b.sum()), b.nbytes)):
        fn()
        best = min(_timed(fn) for _ in range(repeats))
        out[name] = nbytes / best / 1e9
    out["best"] = max(out["dot"], out["sum"])
    return out


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def floor_tokens_per_s(weight_bytes: float, bandwidth_gb_s: float) -> float:
    """The decode rate at which reading `weight_bytes` per token saturates `bandwidth_gb_s`."""
    return bandwidth_gb_s * 1e9 / weight_bytes


_ONNX_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 21: 1, 22: 1}
_GATHERS = ("Gather", "GatherBlockQuantized")


def onnx_weight_bytes(path: str | os.PathLike) -> int:
    """Bytes of the initializers of an ONNX graph that one decode step reads (external data included).

    An initializer used only as a Gather's table (an embedding) reads one row a token and is left out.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    used_by: dict[str, set[str]] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            used_by.setdefault(name, set()).add(node.op_type if i == 0 else "other")
    total = 0
    for init in g.initializer:
        users = used_by.get(init.name, set())
        if users and users <= set(_GATHERS):
            continue
        total += _initializer_bytes(init)
    return total


def _initializer_bytes(init: Any) -> int:
    for entry in init.external_data:
        if entry.key == "length":
            return int(entry.value)
    if init.raw_data:
        return len(init.raw_data)
    n = 1
    for d in init.dims:
        n *= int(d)
    bits = 4 if init.data_type in (17, 18, 19, 20, 23) else 8 * _ONNX_BYTES.get(init.data_type, 4)
    return (n * bits + 7) // 8


def gguf_weight_bytes(path: str | os.PathLike) -> int:
    """Bytes of a GGUF's tensors that one decode step reads: all, except the token embedding when the model
    has its own output matrix (a tied model's output layer reads the embedding)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())


def machine() -> dict[str, Any]:
    """CPU model, core count, load average, for the report."""
    model = None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0] if Path("/proc/cpuinfo").is_file() \
        else ""
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma") if f" {f}" in flags]
    return {"cpu": model or "unknown", "cores": os.cpu_count(), "isa": isa, "load_avg": os.getloadavg()[0],
            "mem_gib": _mem_gib()}


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None
