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
    """The default recipe (standardised inputs); the returned state, folded, is a projector on raw features."""
    from calib.align.train import Standardiser

    _, layout, encoded, feats, lm = few
    projector = seed_projector(build_projector(576, 576), seed=0)
    before = _loss(projector, lm, layout, encoded, feats, smol_llava.pad_token_id)
    config = TrainConfig(seed=0, epochs=4, batch_size=3, lr=3e-3, warmup_fraction=0.0)
    result = train_projector(projector, lm, layout, encoded, feats, smol_llava.pad_token_id, config, progress=False,
                             standardiser=Standardiser.fit(feats))
    projector.load_state_dict(result.state)
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


def test_length_grouping_keeps_every_sample_and_cuts_padding():
    lengths = [int(x) for x in torch.randint(10, 200, (640,), generator=torch.Generator().manual_seed(0))]
    config = TrainConfig(seed=2, batch_size=4, group_by_length=True)
    plain, grouped = batches(640, config), batches(640, config, lengths)
    assert sorted(i for b in grouped for i in b) == list(range(640)) and len(grouped) == 160
    assert grouped == batches(640, config, lengths)

    def padded(plan: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in plan)

    assert padded(grouped) < 0.8 * padded(plain)
    ungrouped = TrainConfig(seed=2, batch_size=4, group_by_length=False)
    assert batches(640, ungrouped, lengths) == plain
    assert sorted(b[0] for b in grouped[:20]) != [b[0] for b in grouped[:20]]  # batch order stays shuffled
    with pytest.raises(UserError, match="lengths"):
        batches(5, config, [1, 2])


def test_standardiser_folds_exactly_into_the_first_linear():
    """A projector trained on standardised features, folded, gives the same embeddings on raw features."""
    from calib.align.train import STD_FLOOR, Standardiser

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 49, 40, generator=g) * torch.logspace(-3, 1, 40) + torch.linspace(-2, 2, 40)
    std = Standardiser.fit(feats.half(), chunk=4)
    flat = feats.half().float().reshape(-1, 40)
    torch.testing.assert_close(std.mean, flat.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.std, flat.std(0, unbiased=False).clamp_min(STD_FLOOR), rtol=1e-4, atol=1e-6)
    assert (std.std >= STD_FLOOR).all() and (std.std == STD_FLOOR).sum() >= 5
    projector = seed_projector(build_projector(16, 8, in_features=40), seed=3)
    raw = seed_projector(build_projector(16, 8, in_features=40), seed=4)
    raw.load_state_dict(std.fold(projector.state_dict()))
    x = feats[:2]
    torch.testing.assert_close(raw(x), projector(std.apply(x)), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(raw(x), projector(x), atol=1e-2)
