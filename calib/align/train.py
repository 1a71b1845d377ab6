"""Train the projector alone: AdamW with linear warm-up and cosine decay, deterministic for a seed."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from calib.align.forward import FrozenLM
from calib.align.packing import EncodedSample, Layout, pack
from runtime.errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the data settings live with the data)."""

    seed: int = 0
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    group_by_length: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not (self.lr > 0 and 0 <= self.warmup_fraction < 1 and self.weight_decay >= 0 and self.grad_clip > 0):
            raise UserError("lr and grad_clip must be > 0, warmup_fraction in [0, 1), weight_decay >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """The trained projector's state, the loss of every step and the wall time in seconds."""

    state: dict[str, torch.Tensor]
    losses: list[float]
    seconds: float


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


LENGTH_WINDOW = 16  # batches whose samples are sorted by length together


def batches(n: int, config: TrainConfig, lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Sample indices per step: a seeded permutation per epoch, cut into batches (the last may be short).

    With `lengths` and `config.group_by_length`, each run of LENGTH_WINDOW batches of the permutation is sorted
    by length before it is cut and the batches are then shuffled, so a batch's rows pad to similar lengths
    (less compute spent on padding) while the order stays random.
    """
    g = torch.Generator().manual_seed(config.seed)
    grouped = lengths is not None and config.group_by_length
    if lengths is not None and len(lengths) != n:
        raise UserError(f"{len(lengths)} lengths for {n} samples")
    out = []
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=g).tolist()
        if not grouped:
            out += [order[i:i + config.batch_size] for i in range(0, n, config.batch_size)]
            continue
        window = config.batch_size * LENGTH_WINDOW
        epoch = []
        for w in range(0, n, window):
            chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
            epoch += [chunk[i:i + config.batch_size] for i in range(0, len(chunk), config.batch_size)]
        out += [epoch[i] for i in torch.randperm(len(epoch), generator=g).tolist()]
    return out


STD_FLOOR = 0.05  # channels that barely vary are scaled by at most 1 / STD_FLOOR


@dataclass(frozen=True)
class Standardiser:
    """Per-channel mean and spread of the training features: the projector trains on (x - mean) / std, so every
    channel starts on an equal footing (the head map's channels range over 300x in spread, the colour-bearing
    stage-4 ones sit in the middle), and `fold` moves the affine map into the first Linear afterwards."""

    mean: torch.Tensor  # [FEATURE_DIM]
    std: torch.Tensor  # [FEATURE_DIM], >= STD_FLOOR

    @classmethod
    def fit(cls, features: torch.Tensor, chunk: int = 256) -> "Standardiser":
        """Mean and standard deviation over every patch of `features` [n, patches, dim] (float64 sums)."""
        total = torch.zeros(features.shape[-1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        count = 0
        for start in range(0, features.shape[0], chunk):
            x = features[start:start + chunk].reshape(-1, features.shape[-1]).double()
            total += x.sum(0)
            squares += (x * x).sum(0)
            count += x.shape[0]
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt()
        return cls(mean.float(), std.float().clamp_min(STD_FLOOR))

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.mean) / self.std

    def fold(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state of a projector on raw features that computes what `state` computes on standardised ones."""
        weight = state["0.weight"] / self.std
        return {**state, "0.weight": weight, "0.bias": state["0.bias"] - weight @ self.mean}


def train_projector(projector: nn.Module, lm: FrozenLM, layout: Layout, samples: Sequence[EncodedSample],
                    features: torch.Tensor, pad_id: int, config: TrainConfig, progress: bool = True,
                    on_step: Callable[[int, float], None] | None = None,
                    standardiser: Standardiser | None = None,
                    adapter_params: Sequence[nn.Parameter] = (), adapter_lr: float | None = None) -> TrainResult:
    """Train `projector` (in place) on `samples`, whose image features are rows of `features` (standardised by
    `standardiser` when given; the returned state is then folded back to raw features). `adapter_params` (the
    language model's LoRA weights, if any) train alongside at `adapter_lr` (default: the projector's)."""
    if not samples:
        raise UserError("no training samples")
    if features.shape[0] <= max(s.feature_index for s in samples):
        raise UserError(f"features has {features.shape[0]} rows but the samples index beyond them")
    plan = batches(len(samples), config, [sum(len(t.tail) for t in s.turns) for s in samples])
    warmup = max(1, round(config.warmup_fraction * len(plan)))
    groups = [{"params": list(projector.parameters())}]
    if adapter_params:
        groups.append({"params": list(adapter_params), "lr": adapter_lr or config.lr})
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, len(plan), warmup))
    projector.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(plan, desc="projector", unit="step", disable=not progress)
    for step, idx in enumerate(bar):
        batch = pack(layout, [samples[i] for i in idx], pad_id)
        x = features[batch.feature_index].float()
        embeds = projector(standardiser.apply(x) if standardiser is not None else x)
        loss = lm.loss(embeds, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step is not None:
            on_step(step, losses[-1])
    projector.eval()
    state = {k: v.detach().clone() for k, v in projector.state_dict().items()}
    if standardiser is not None:
        state = standardiser.fold(state)
    return TrainResult(state, losses, time.perf_counter() - start)
