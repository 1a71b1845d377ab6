"""Packed chats give each answer token the logits it gets when its chat runs alone in the inference format."""
from __future__ import annotations

import torch

from calib.align import packing
from calib.align.data import Turn


def test_packed_logits_equal_single_turn_logits(smol_llava, few):
    samples, layout, encoded, feats, lm = few
    projector = smol_llava.module.projector
    batch = packing.pack(layout, encoded, smol_llava.pad_token_id)
    with torch.no_grad():
        packed = lm.answer_logits(projector(feats.float()), batch)
        alone = []
        for sample, f in zip(samples, feats):
            for turn in sample.turns:
                prompt = smol_llava.tokenize(smol_llava.chat_prompt(turn.question, True))
                ids = smol_llava.tokenize(smol_llava.chat_prompt(turn.question, True) + turn.answer + "<|im_end|>")
                embeds = smol_llava.inputs_embeds(ids, [sample.image])
                logits, _ = smol_llava.decode(embeds[None], torch.ones(1, len(ids), dtype=torch.long),
                                              torch.arange(len(ids))[None])
                alone.append(logits[0, len(prompt) - 1:len(ids) - 1])
    alone = torch.cat(alone)
    assert packed.shape == alone.shape and packed.shape[0] == len(batch.loss_targets)
    assert (packed - alone).abs().max() < 2e-2 * alone.abs().max()
    assert torch.equal(packed.argmax(-1), alone.argmax(-1))


def test_targets_are_the_answer_tokens_and_the_end_token(smol_llava, few):
    samples, layout, encoded, _, _ = few
    batch = packing.pack(layout, encoded[:1], smol_llava.pad_token_id)
    expected = []
    for turn in samples[0].turns:
        expected += smol_llava.tokenizer(turn.answer, add_special_tokens=False).input_ids + [smol_llava.eos_token_ids[0]]
    assert batch.loss_targets.tolist() == expected
    assert abs(float(batch.loss_weights.sum()) - 1.0) < 1e-6
    assert tuple(layout.prefix) == tuple(smol_llava.tokenize(smol_llava.chat_prompt("x", True))[:len(layout.prefix)])


def test_chats_in_a_row_see_the_image_but_not_each_other(smol_llava, few):
    _, layout, encoded, _, _ = few
    batch = packing.pack(layout, encoded[:1], smol_llava.pad_token_id)
    mask = batch.attention_mask[0, 0]
    p, n_img = len(layout.prefix), layout.num_image_tokens
    first = len(encoded[0].turns[0].tail)
    second_start = n_img + first
    assert mask[second_start, :p + n_img].all()
    assert not mask[second_start, p + n_img:p + second_start].any()
    assert mask[n_img + first - 1, p:p + n_img + first].all()
    assert batch.position_ids[0, second_start] == p + n_img


def test_a_turn_whose_prompt_has_no_image_slot_is_refused(smol_llava):
    import pytest

    from runtime.errors import UserError

    class NoImage:
        def __getattr__(self, name):
            return getattr(smol_llava, name)

        def chat_prompt(self, question, with_image):
            return smol_llava.chat_prompt(question, False)

    with pytest.raises(UserError, match="one image"):
        packing.encode_turn(NoImage(), Turn("What colour is it?", "red", "colour"))
