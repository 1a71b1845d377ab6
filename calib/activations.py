"""Activation collection: teacher-forced passes over calibration samples, pooled per unit, streamed to disk.

Each sample is laid out exactly as the deployed model sees it (chat template with the image spliced in
through `model.inputs_embeds`, then the response tokens) and run through `model.decode` once. Forward hooks
on every MLP Linear (gate_proj, up_proj, down_proj) of every decoder layer pool each unit's output over the
response tokens only (max, as AurA; or mean), and each batch's pooled rows go straight into a
`calib.scoring.ActivationStore`, so memory holds one batch, never samples x units.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from calib.calibset import CalibSample
from calib.models.base import MultimodalModel
from calib.scoring import ActivationStore
from runtime.artifacts import remove_stale
from runtime.errors import UserError

POOLINGS = ("max", "mean")
STORE_PREFIX = "sgm-activations-"


@dataclass(frozen=True)
class Layout:
    """One sample as token ids: the prompt part (not pooled) and the response part (pooled)."""

    prompt_ids: list[int]
    response_ids: list[int]


def layout(model: MultimodalModel, sample: CalibSample, max_response_tokens: int | None = None) -> Layout:
    """Token ids of a sample in the model's format; the response is cut to `max_response_tokens`."""
    if sample.chat:
        prompt_ids = model.tokenize(model.chat_prompt(sample.prompt, sample.image is not None))
    else:
        if sample.image is not None:
            raise UserError(f"sample {sample.id} is raw text (chat=False) but has an image; raw-text samples cannot "
                            f"place an image, use chat=True")
        prompt_ids = model.tokenize(sample.prompt) if sample.prompt else \
            model.tokenizer("", add_special_tokens=model.add_special_tokens()).input_ids
    if sample.response_ids is not None:
        response = list(sample.response_ids)
    else:
        response = model.tokenizer(sample.response, add_special_tokens=False).input_ids
    if max_response_tokens is not None:
        response = response[:max_response_tokens]
    return Layout(list(prompt_ids), list(response))


def length_matched(lengths: Sequence[int], labels: Sequence[bool], seed: int = 0) -> list[int]:
    """Indices of a subset in which every response length has as many toxic as non-toxic samples.

    Max pooling grows with the number of pooled tokens, so a length gap between the classes makes every unit
    look like a (weak) toxic expert; after matching, length alone has AUROC exactly 0.5.
    """
    rng = np.random.default_rng(seed)
    by_length: dict[tuple[int, bool], list[int]] = {}
    for i, (n, y) in enumerate(zip(lengths, labels)):
        by_length.setdefault((int(n), bool(y)), []).append(i)
    keep: list[int] = []
    for n in sorted({n for n, _ in by_length}):
        pos, neg = by_length.get((n, True), []), by_length.get((n, False), [])
        k = min(len(pos), len(neg))
        for group in (pos, neg):
            keep.extend(group if len(group) == k else rng.choice(group, size=k, replace=False).tolist())
    return sorted(keep)


def _embeds(model: MultimodalModel, sample: CalibSample, lay: Layout) -> torch.Tensor:
    """[s, hidden]: the prompt with its image spliced in, then the response tokens embedded as generation
    embeds them (a generated id that happens to be the image token stays a plain token)."""
    prompt = model.inputs_embeds(lay.prompt_ids, [sample.image] if sample.image is not None else [])
    response = model.embed_tokens(torch.tensor(lay.response_ids, dtype=torch.long, device=prompt.device)[None])[0]
    return torch.cat([prompt, response.to(prompt.dtype)], dim=0)


class _Pooler:
    """Forward hooks that pool every hooked module's output over the current batch's response positions."""

    def __init__(self, model: MultimodalModel, pooling: str) -> None:
        self.model = model
        self.pooling = pooling
        self.units = model.mlp_units()
        self.offsets = np.cumsum([0] + [u.width for u in self.units])
        self.mask: torch.Tensor | None = None  # [b, s] bool, True on response tokens
        self.rows: torch.Tensor | None = None  # [b, n_units] float32
        self.handles: list[Any] = []

    def __enter__(self) -> "_Pooler":
        for i, unit in enumerate(self.units):
            start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
            self.handles.append(self.model.mlp_linear(unit).register_forward_hook(
                lambda mod, inp, out, start=start, stop=stop: self._pool(out, start, stop)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _pool(self, out: torch.Tensor, start: int, stop: int) -> None:
        mask = self.mask.to(out.device)[:, :, None]
        x = out.float()
        if self.pooling == "max":
            pooled = x.masked_fill(~mask, float("-inf")).amax(dim=1)
        else:
            pooled = (x * mask).sum(dim=1) / mask.sum(dim=1)
        self.rows[:, start:stop] = pooled.cpu()


@torch.no_grad()
def collect(model: MultimodalModel, samples: Sequence[CalibSample], store_path: str | os.PathLike, pooling: str = "max",
            batch_size: int = 8, max_response_tokens: int | None = 128, store_dtype: str = "float32",
            match_lengths: bool = False, seed: int = 0,
            progress: bool = True) -> tuple[ActivationStore, dict[str, Any]]:
    """Pooled activations of every unit for every sample with a non-empty response, streamed to disk.

    Returns the closed store (rows in length-sorted order, labels alongside) and a summary (samples used,
    samples skipped for an empty response, mean response tokens per class: a length gap between the
    classes confounds max pooling). With `match_lengths`, only length-matched samples are used.
    """
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    laid = [(s, layout(model, s, max_response_tokens)) for s in samples]
    used = [(s, lay) for s, lay in laid if lay.response_ids]
    skipped = len(laid) - len(used)
    if not used:
        raise UserError("no calibration sample has a non-empty response; nothing to score")
    unmatched = 0
    if match_lengths:
        kept = length_matched([len(lay.response_ids) for _, lay in used], [s.label for s, _ in used], seed)
        unmatched = len(used) - len(kept)
        used = [used[i] for i in kept]
        if not used:
            raise UserError("no response length occurs in both classes; collect without length matching")
    used.sort(key=lambda p: len(p[1].prompt_ids) + len(p[1].response_ids))  # less padding per batch
    units = [(u.key, u.width) for u in model.mlp_units()]
    store = ActivationStore(store_path, units, dtype=store_dtype, expected_samples=len(used))
    batches = [used[i:i + batch_size] for i in range(0, len(used), batch_size)]
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc=f"activations ({pooling} pooling)", unit="batch")
    try:
        with _Pooler(model, pooling) as pooler:
            for batch in batches:
                embeds = [_embeds(model, s, lay) for s, lay in batch]
                b, length = len(batch), max(e.shape[0] for e in embeds)
                x = embeds[0].new_zeros((b, length, embeds[0].shape[-1]))
                attention = torch.zeros((b, length), dtype=torch.long)
                pooler.mask = torch.zeros((b, length), dtype=torch.bool)
                for i, ((s, lay), e) in enumerate(zip(batch, embeds)):
                    x[i, :e.shape[0]] = e  # right padding: causal attention never sees the pads
                    attention[i, :e.shape[0]] = 1
                    pooler.mask[i, len(lay.prompt_ids):e.shape[0]] = True
                pooler.rows = torch.empty((b, store.n_units), dtype=torch.float32)
                positions = torch.arange(length, device=x.device)[None].expand(b, -1)
                model.decode(x, attention.to(x.device), positions, None, logits_to_keep=1)
                store.append(pooler.rows.numpy(), [s.label for s, _ in batch])
    except BaseException:
        store.delete()
        raise
    store.close()
    lengths = {lab: [len(lay.response_ids) for s, lay in used if s.label == lab] for lab in (True, False)}
    summary = {"pooling": pooling, "max_response_tokens": max_response_tokens, "store_dtype": store_dtype,
               "n_used": len(used), "n_skipped_empty_response": skipped, "match_lengths": match_lengths,
               "n_dropped_unmatched_length": unmatched,
               "mean_response_tokens_toxic": float(np.mean(lengths[True])) if lengths[True] else None,
               "mean_response_tokens_nontoxic": float(np.mean(lengths[False])) if lengths[False] else None}
    return store, summary


def store_path_in(work_dir: str | os.PathLike | None) -> Path:
    """A fresh activation-store path under `work_dir` (default: the system temp directory)."""
    import tempfile

    base = Path(work_dir) if work_dir else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    remove_stale(base, STORE_PREFIX)  # a killed run's store can be gigabytes
    fd, name = tempfile.mkstemp(prefix=f"{STORE_PREFIX}{os.getpid()}-", suffix=".bin", dir=base)
    os.close(fd)
    return Path(name)
