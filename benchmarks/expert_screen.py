"""A fast screen of experts artifacts before sampling: how much each intervention lowers the likelihood of the
toxic responses a baseline run produced, against the non-toxic ones.

Sampling 400 responses per variant costs about 10 minutes for gemma-llava on 2 cores; teacher-forcing the same
400 responses costs about 80 seconds. For every response of a baseline MM-TOXIC-QA run (raw-text conditions such
as `continuation`), this sums the log-probability of its tokens given its prompt, with and without each
intervention (hooks, as `calib.intervention.Suppressed`), and prints per variant:

- the mean change for the harmful responses and for the others, and their difference (nats per response): a
  variant that makes harmful continuations much less likely than clean ones is a candidate, one whose difference
  is near 0 is not (it only makes the model less fluent);
- the change per token on the non-toxic responses, a perplexity proxy (-0.02 nats/token is about +2%).

It ranks candidates; only sampling (`benchmarks/factor_sweep.py`) measures a harmful rate.

    python benchmarks/expert_screen.py --model gemma-llava --run build/gemma/sweep-rtp/runs/baseline \
        --experts own=build/gemma/experts --experts rtp=build/gemma/experts-rtp
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.cli import run  # noqa: E402
from runtime.errors import UserError  # noqa: E402


def _responses(run_dir: Path, model: object) -> list[tuple[list[int], list[int], bool]]:
    """(prompt ids, response ids, harmful) for every non-empty raw-text response of a run."""
    path = run_dir / "generations.jsonl"
    if not path.is_file():
        raise UserError(f"{path} is missing; pass the directory of a runtime.mmtoxicqa run (it has generations.jsonl)")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            prompt, response, harmful, image = row["prompt"], row["response"], bool(row["harmful"]), row["image"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path} line {lineno}: not a generations row ({e})") from None
        if image is None and response and row.get("condition") in ("continuation",):
            out.append((model.tokenize(prompt), model.tokenizer(response, add_special_tokens=False).input_ids,
                        harmful))
    if not out:
        raise UserError(f"{path} has no continuation responses to screen on; run the baseline with "
                        f"--conditions continuation")
    return out


def log_probs(model: object, data: list[tuple[list[int], list[int], bool]], batch_size: int = 16):
    """Sum of log-probabilities of each response given its prompt (left padding: logits for the tail only)."""
    import numpy as np
    import torch

    out = np.zeros(len(data))
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]) + len(data[i][1]))
    with torch.no_grad():
        for b0 in range(0, len(order), batch_size):
            idx = order[b0:b0 + batch_size]
            seqs = [data[i][0] + data[i][1] for i in idx]
            length, keep = max(map(len, seqs)), max(len(data[i][1]) for i in idx) + 1
            ids = torch.zeros((len(idx), length), dtype=torch.long)
            att, pos = torch.zeros_like(ids), torch.zeros_like(ids)
            for j, s in enumerate(seqs):
                ids[j, length - len(s):] = torch.tensor(s)
                att[j, length - len(s):] = 1
                pos[j, length - len(s):] = torch.arange(len(s))
            logits, _ = model.decode(model.embed_tokens(ids), att, pos, logits_to_keep=keep)
            logits = logits.float()
            lse = torch.logsumexp(logits, -1)
            for j, i in enumerate(idx):
                q = torch.tensor(data[i][1])
                rows = torch.arange(keep - 1 - len(q), keep - 1)
                out[i] = float((logits[j, rows, q] - lse[j, rows]).sum())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma-llava")
    p.add_argument("--run", type=Path, required=True, help="a baseline runtime.mmtoxicqa run directory")
    p.add_argument("--experts", action="append", default=[], metavar="NAME=DIR", help="an experts artifact")
    p.add_argument("--threads", type=int, default=2)

    def _main(argv: list[str] | None) -> None:
        args = p.parse_args(argv)
        named = []
        for spec in args.experts:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise UserError(f"--experts {spec!r}: write NAME=DIR")
            named.append((name, path))
        import numpy as np
        import torch

        from calib.experts import load_experts
        from calib.intervention import suppress
        from calib.models import load_model

        torch.set_num_threads(args.threads)
        model = load_model(args.model)
        data = _responses(args.run, model)
        y = np.array([d[2] for d in data])
        n_tokens = np.array([len(d[1]) for d in data])
        base = log_probs(model, data)
        print(f"{len(data)} responses ({int(y.sum())} harmful) of {args.run}\n")
        print("| experts | units | harmful dlogp | other dlogp | difference | other dlogp/token | s |")
        print("|---|---|---|---|---|---|---|")
        for name, path in named:
            t0 = time.time()
            experts = load_experts(path, model)
            with suppress(model, experts):
                d = log_probs(model, data) - base
            units = experts.counts()["totals"]["suppressed"]
            print(f"| {name} | {units} | {d[y].mean():+.3f} | {d[~y].mean():+.3f} | {d[y].mean() - d[~y].mean():+.3f} "
                  f"| {d[~y].sum() / n_tokens[~y].sum():+.4f} | {time.time() - t0:.0f} |", flush=True)

    return run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
