"""A shortened training run: the loss falls, and the same seed gives the same projector."""
from __future__ import annotations

import pytest
import torch

from calib.align import packing
from calib.align.train import TrainConfig, batches, lr_factor, train_projector
from calib.models.smol_llava import build_projector, seed_projector
from runtime.errors import UserError


def _loss(projector, lm, layout, encoded, feats, pad_id) -> float:
    with torch.no_grad():
        batch = packing.pack(layout, encoded, pad_id)
        return float(lm.loss(projector(feats[batch.feature_index].float()), batch))


def test_a_few_steps_make_the_loss_fall(smol_llava, few):
    _, layout, encoded, feats, lm = few
    projector = seed_projector(build_projector(576, 576), seed=0)
    before = _loss(projector, lm, layout, encoded, feats, smol_llava.pad_token_id)
    config = TrainConfig(seed=0, epochs=4, batch_size=3, lr=3e-3, warmup_fraction=0.0)
    result = train_projector(projector, lm, layout, encoded, feats, smol_llava.pad_token_id, config, progress=False)
    after = _loss(projector, lm, layout, encoded, feats, smol_llava.pad_token_id)
    assert len(result.losses) == 4
    assert result.losses[-1] < result.losses[0]
    assert after < 0.8 * before, (before, after, result.losses)


def test_same_seed_same_projector(smol_llava, few):
    _, layout, encoded, feats, lm = few
    config = TrainConfig(seed=5, epochs=1, batch_size=2, lr=1e-3)
    states = []
    for _ in range(2):
        projector = seed_projector(build_projector(576, 576), seed=5)
        states.append(train_projector(projector, lm, layout, encoded[:2], feats, smol_llava.pad_token_id, config,
                                      progress=False).state)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_schedule_and_batches():
    assert [round(lr_factor(s, 10, 2), 3) for s in (0, 1, 2, 10)] == [0.5, 1.0, 1.0, 0.0]
    plan = batches(10, TrainConfig(seed=1, epochs=2, batch_size=4))
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2]
    assert sorted(plan[0] + plan[1] + plan[2]) == list(range(10))
    assert plan == batches(10, TrainConfig(seed=1, epochs=2, batch_size=4))
    with pytest.raises(UserError, match="batch size"):
        TrainConfig(batch_size=0)
