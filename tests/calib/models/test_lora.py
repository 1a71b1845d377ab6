"""LoRA deltas: merging the shipped A/B matrices equals running the model with peft's adapters attached."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from calib.models import lora
from runtime.errors import UserError


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(8, 6)
        self.v_proj = nn.Linear(8, 4)
        self.o_proj = nn.Linear(4, 8)

    def forward(self, x):
        return self.o_proj(self.v_proj(x)) + self.q_proj(x).sum(-1, keepdim=True)


def _adapted(seed: int = 0):
    torch.manual_seed(seed)
    base = Tiny()
    plain = Tiny()
    plain.load_state_dict(base.state_dict())
    params = lora.attach(base, rank=2, alpha=4.0, targets=["q_proj", "v_proj"], seed=1)
    with torch.no_grad():
        for p in params:  # peft starts B at zero; give both matrices real values so the merge has teeth
            p.normal_()
    return base, plain, params


def test_merge_equals_the_adapted_forward():
    adapted, plain, params = _adapted()
    assert len(params) == 4
    x = torch.randn(5, 8)
    before = plain(x)
    state = lora.adapter_state(adapted)
    assert sorted(state) == ["q_proj.lora_A", "q_proj.lora_B", "v_proj.lora_A", "v_proj.lora_B"]
    assert lora.merge(plain, state, scaling=4.0 / 2) == 2
    assert torch.allclose(plain(x), adapted(x), atol=1e-5)
    assert (plain(x) - before).abs().max() > 0.1
    with lora.disabled(adapted):
        assert torch.allclose(adapted(x), before, atol=1e-6)


def test_a_wrong_scaling_or_shape_is_caught():
    adapted, plain, _ = _adapted()
    state = lora.adapter_state(adapted)
    x = torch.randn(3, 8)
    lora.merge(plain, state, scaling=1.0)
    assert not torch.allclose(plain(x), adapted(x), atol=1e-3)
    bad = {**state, "q_proj.lora_B": torch.zeros(7, 2)}
    with pytest.raises(UserError, match="does not fit"):
        lora.merge(Tiny(), bad, scaling=1.0)
    with pytest.raises(UserError, match="A/B pairs"):
        lora.merge(Tiny(), {"q_proj.lora_A": state["q_proj.lora_A"]}, scaling=1.0)
