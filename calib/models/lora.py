"""LoRA deltas of a family model's language model: attached for training with peft, shipped as the small A/B
matrices (safetensors), and merged into the weights when the model directory is built (W += scaling * B @ A),
so every later stage sees an ordinary checkpoint with no adapter code."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from runtime.errors import UserError

SUFFIXES = (".lora_A", ".lora_B")


def attach(lm: nn.Module, rank: int, alpha: float, targets: Sequence[str], seed: int) -> list[nn.Parameter]:
    """Inject trainable LoRA adapters (peft) into `lm`'s `targets` Linears; returns their parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1 or alpha <= 0 or not targets:
        raise UserError(f"LoRA needs rank >= 1, alpha > 0 and target modules (got {rank}, {alpha}, {list(targets)})")
    torch.manual_seed(seed)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                                       bias="none"), lm)
    params = [p for n, p in lm.named_parameters() if "lora_" in n]
    if not params:
        raise UserError(f"no module of the language model is named {list(targets)}: no LoRA adapter was attached")
    return params


@contextmanager
def disabled(lm: nn.Module) -> Iterator[None]:
    """Run `lm` without its adapters inside the block (the untuned language model)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in lm.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def adapter_state(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' A and B matrices keyed `<linear path>.lora_A` / `.lora_B` (peft's adapter name dropped)."""
    out = {}
    for name, p in lm.named_parameters():
        for suffix in SUFFIXES:
            tag = f"{suffix}.default.weight"
            if name.endswith(tag):
                out[name[:-len(tag)] + suffix] = p.detach().clone().contiguous()
    return out


def merge(lm: nn.Module, state: dict[str, torch.Tensor], scaling: float, source: Path | str = "the LoRA file") -> int:
    """Add scaling * B @ A to each adapted Linear's weight of a plain (adapter-free) `lm`; returns how many."""
    modules = dict(lm.named_modules())
    bases = sorted({k[:-len(s)] for k in state for s in SUFFIXES if k.endswith(s)})
    if not bases or len(state) != 2 * len(bases):
        raise UserError(f"{source} does not hold LoRA A/B pairs; retrain it with python -m calib.align")
    with torch.no_grad():
        for base in bases:
            linear = modules.get(base)
            a, b = state.get(base + ".lora_A"), state.get(base + ".lora_B")
            if not isinstance(linear, nn.Linear) or a is None or b is None \
                    or (b.shape[0], a.shape[1]) != tuple(linear.weight.shape) or a.shape[0] != b.shape[1]:
                raise UserError(f"{source}: {base} does not fit this language model; retrain it with "
                                "python -m calib.align")
            linear.weight += scaling * (b.float() @ a.float()).to(linear.weight.dtype)
    return len(bases)
