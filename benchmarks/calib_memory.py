"""Memory and time of the streaming AUROC path at llava-1.5-7b scale, on synthetic pooled activations.

LLaVA-1.5-7B's language model has 32 decoder layers with MLP widths gate 11008, up 11008, down 4096:
835,584 hookable units. Pooled activations for 2,000 calibration samples are streamed row by row into
`calib.scoring.ActivationStore` (on disk), then AUROC is computed chunk by chunk. The peak RSS of this
process must stay under 4 GB; `--layers` runs a fraction of the model and extrapolates time linearly.

    .venv/bin/python benchmarks/calib_memory.py --layers 32 --samples 2000
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calib.scoring import DEFAULT_CHUNK_BYTES, ActivationStore  # noqa: E402

LLAVA_7B_LAYERS = 32
LLAVA_7B_WIDTHS = {"gate_proj": 11008, "up_proj": 11008, "down_proj": 4096}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=LLAVA_7B_LAYERS, help="decoder layers to simulate (32 = full)")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    ap.add_argument("--batch", type=int, default=8, help="samples per append (one forward batch)")
    ap.add_argument("--chunk-mb", type=int, default=DEFAULT_CHUNK_BYTES >> 20)
    ap.add_argument("--work-dir", default=None, help="where the store goes (default: system temp)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    units = [(f"layers.{i}.mlp.{m}", w) for i in range(args.layers) for m, w in LLAVA_7B_WIDTHS.items()]
    n_units = sum(w for _, w in units)
    rng = np.random.default_rng(args.seed)
    labels = rng.random(args.samples) < 0.5
    planted = rng.choice(n_units, size=min(100, n_units), replace=False)  # units that carry the label
    rss_start = peak_rss_mb()

    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        store = ActivationStore(Path(work) / "acts.bin", units, dtype=args.dtype, expected_samples=args.samples)
        t0 = time.perf_counter()
        for start in range(0, args.samples, args.batch):
            y = labels[start:start + args.batch]
            rows = rng.standard_normal((y.shape[0], n_units), dtype=np.float32)
            rows[:, planted] += y[:, None].astype(np.float32)
            # ReLU-like sparsity and a coarse grid give ties, as max-pooled bf16 activations do.
            np.maximum(rows, -0.5, out=rows)
            rows = np.round(rows * 64) / 64
            store.append(rows, y)
        store.close()
        t_write = time.perf_counter() - t0
        rss_write = peak_rss_mb()
        disk = store.path.stat().st_size
        t0 = time.perf_counter()
        scores = store.auroc(chunk_bytes=args.chunk_mb << 20, progress=True)
        t_score = time.perf_counter() - t0
        store.delete()

    others = np.delete(scores, planted)
    full_units = LLAVA_7B_LAYERS * sum(LLAVA_7B_WIDTHS.values())
    scale = full_units / n_units
    result = {
        "units": n_units, "samples": args.samples, "dtype": args.dtype, "chunk_mb": args.chunk_mb,
        "store_gib": round(disk / 2**30, 3),
        "write_s": round(t_write, 1), "auroc_s": round(t_score, 1),
        "peak_rss_mb_before": round(rss_start), "peak_rss_mb_after_write": round(rss_write),
        "peak_rss_mb": round(peak_rss_mb()),
        "planted_auroc_mean": round(float(scores[planted].mean()), 4),
        "other_auroc_mean": round(float(others.mean()), 4), "other_auroc_max": round(float(others.max()), 4),
        "extrapolated_to_llava_7b": None if scale == 1 else {
            "units": full_units, "store_gib": round(disk * scale / 2**30, 2),
            "write_s": round(t_write * scale), "auroc_s": round(t_score * scale),
            "note": "time scaled linearly in units; peak RSS does not grow with units (chunked)"},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
