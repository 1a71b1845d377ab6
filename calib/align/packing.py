"""Several single-turn chats about one image packed into one sequence, exactly equivalent to running each alone.

Every training chat is `chat_prompt(question, True) + answer + <end of response>`. Tokenised, it is
`prefix` (system prompt and user header, the same for every chat) + 49 image tokens + `tail` (question,
assistant header, answer). Chats about one image share prefix and image, so a row holds the image once and
then each chat's tail; an attention mask lets each tail see the prefix, the image and itself only, and its
position ids restart after the image, so every answer token gets exactly the logits it would get alone.
The prefix's key/value cache is computed once and reused for every row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from calib.align.data import Sample, Turn
from calib.models.base import MultimodalModel
from runtime.errors import UserError

IMAGE = -1  # segment id of the image positions
PAD = -2  # segment id of padding


@dataclass(frozen=True)
class EncodedTurn:
    """The tokens of one chat after its image tokens; `answer_start` indexes the first answer token."""

    tail: tuple[int, ...]
    answer_start: int


@dataclass(frozen=True)
class Layout:
    """What every chat shares: the prefix token ids (before the image) and the number of image tokens."""

    prefix: tuple[int, ...]
    num_image_tokens: int


def _split(model: MultimodalModel, ids: list[int], what: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    first = ids.index(model.image_token_id) if model.image_token_id in ids else -1
    n = model.num_image_tokens
    if first < 0 or ids[first:first + n] != [model.image_token_id] * n or model.image_token_id in ids[first + n:]:
        raise UserError(f"{what}: expected one image of {n} tokens in the chat prompt")
    return tuple(ids[:first]), tuple(ids[first + n:])


def encode_turn(model: MultimodalModel, turn: Turn) -> tuple[Layout, EncodedTurn]:
    """Tokenise one chat in the inference format and split it into the shared part and its tail."""
    prompt = model.chat_prompt(turn.question, True)
    end = model.tokenizer.decode([model.eos_token_ids[0]])
    prompt_ids = model.tokenize(prompt)
    full_ids = model.tokenize(prompt + turn.answer + end)
    if full_ids[:len(prompt_ids)] != prompt_ids or len(full_ids) <= len(prompt_ids):
        raise UserError(f"the answer {turn.answer!r} does not tokenise as a continuation of its prompt")
    prefix, tail = _split(model, full_ids, f"question {turn.question!r}")
    return Layout(prefix, model.num_image_tokens), EncodedTurn(tail, len(prompt_ids) - len(prefix)
                                                                - model.num_image_tokens)


@dataclass(frozen=True)
class EncodedSample:
    """A sample's chats as tails, with the index of its image features."""

    feature_index: int
    turns: tuple[EncodedTurn, ...]


def encode_samples(model: MultimodalModel, samples: Sequence[Sample]) -> tuple[Layout, list[EncodedSample]]:
    """Encode every sample's turns; all must share one layout (they do for one model's chat template)."""
    layout = None
    out = []
    for i, sample in enumerate(samples):
        if not sample.turns:
            raise UserError(f"sample {sample.source} has no turns to train on")
        encoded = []
        for turn in sample.turns:
            this_layout, et = encode_turn(model, turn)
            if layout is None:
                layout = this_layout
            elif this_layout != layout:
                raise UserError(f"sample {sample.source}: its chat prefix differs from the others'")
            encoded.append(et)
        out.append(EncodedSample(i, tuple(encoded)))
    if layout is None:
        raise UserError("no samples to encode")
    return layout, out


@dataclass(frozen=True)
class PackedBatch:
    """Rows of [image tokens, tail 1, tail 2, ...], padded; the loss picks (row, position) -> target token."""

    feature_index: torch.Tensor  # [b]
    text_ids: torch.Tensor  # [b, s] token ids after the image tokens (pad id at padding)
    attention_mask: torch.Tensor  # [b, 1, n_image + s, prefix + n_image + s] bool
    position_ids: torch.Tensor  # [b, n_image + s]
    loss_rows: torch.Tensor  # [m]
    loss_positions: torch.Tensor  # [m] positions in the row (image tokens included) whose logits predict
    loss_targets: torch.Tensor  # [m]
    loss_weights: torch.Tensor  # [m] each turn weighs 1 / (number of turns in the batch), spread over its tokens


def pack(layout: Layout, samples: Sequence[EncodedSample], pad_id: int) -> PackedBatch:
    """Pack each encoded sample into one row of a batch (see the module docstring)."""
    if not samples:
        raise UserError("cannot pack an empty batch")
    n_img, p = layout.num_image_tokens, len(layout.prefix)
    rows_ids, rows_seg, rows_pos = [], [], []
    loss: list[tuple[int, int, int, float]] = []
    n_turns = sum(len(s.turns) for s in samples)
    for r, sample in enumerate(samples):
        ids: list[int] = []
        seg: list[int] = []
        pos: list[int] = []
        for g, turn in enumerate(sample.turns):
            start = n_img + len(ids)
            n_answer = len(turn.tail) - turn.answer_start
            for k in range(turn.answer_start, len(turn.tail)):
                loss.append((r, start + k - 1, turn.tail[k], 1.0 / (n_answer * n_turns)))
            ids += turn.tail
            seg += [g] * len(turn.tail)
            pos += range(p + n_img, p + n_img + len(turn.tail))
        rows_ids.append(ids)
        rows_seg.append([IMAGE] * n_img + seg)
        rows_pos.append(list(range(p, p + n_img)) + pos)
    s = max(len(ids) for ids in rows_ids)
    b = len(samples)
    text_ids = torch.full((b, s), pad_id, dtype=torch.long)
    seg_t = torch.full((b, n_img + s), PAD, dtype=torch.long)
    pos_t = torch.zeros((b, n_img + s), dtype=torch.long)
    for r in range(b):
        text_ids[r, :len(rows_ids[r])] = torch.tensor(rows_ids[r], dtype=torch.long)
        seg_t[r, :len(rows_seg[r])] = torch.tensor(rows_seg[r])
        pos_t[r, :len(rows_pos[r])] = torch.tensor(rows_pos[r])
    q = torch.arange(n_img + s)
    causal = q[None, :, None] >= q[None, None, :]
    same = (seg_t[:, None, :] == IMAGE) | (seg_t[:, None, :] == seg_t[:, :, None])
    body = causal & same & (seg_t[:, :, None] != PAD) & (seg_t[:, None, :] != PAD)
    mask = torch.cat([torch.ones((b, n_img + s, p), dtype=torch.bool), body], dim=2)[:, None]
    rows, positions, targets, weights = zip(*loss)
    return PackedBatch(
        feature_index=torch.tensor([x.feature_index for x in samples], dtype=torch.long),
        text_ids=text_ids, attention_mask=mask, position_ids=pos_t,
        loss_rows=torch.tensor(rows, dtype=torch.long), loss_positions=torch.tensor(positions, dtype=torch.long),
        loss_targets=torch.tensor(targets, dtype=torch.long),
        loss_weights=torch.tensor(weights, dtype=torch.float32))
