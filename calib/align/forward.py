"""Teacher-forced answer logits of smol-llava's frozen language model on packed batches.

The prefix (system prompt and user header) is run once; its key/value cache is shared by every row. Only the
hidden states at the loss positions go through the LM head, so a batch costs one decoder pass over its rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from calib.align.packing import Layout, PackedBatch
from calib.models.base import MultimodalModel
from runtime.errors import UserError


class FrozenLM:
    """smol-llava's language model with frozen weights and a cached prefix."""

    def __init__(self, model: MultimodalModel, layout: Layout):
        lm = getattr(model.module, "language_model", None)
        if lm is None or not hasattr(lm, "lm_head"):
            raise UserError(f"{model.name} has no language_model with an lm_head: projector training supports "
                            "smol-llava only")
        for p in model.module.parameters():
            p.requires_grad_(False)
        self.lm = lm.eval()
        self.embed = model.embed_tokens
        self.layout = layout
        with torch.no_grad():
            ids = torch.tensor([layout.prefix], dtype=torch.long)
            out = lm.model(inputs_embeds=self.embed(ids), attention_mask=torch.ones_like(ids),
                           position_ids=torch.arange(ids.shape[1])[None], use_cache=True)
        self.prefix_cache = tuple((k, v) for k, v in out.past_key_values.to_legacy_cache())

    def answer_logits(self, image_embeds: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Logits [m, vocab] at the batch's loss positions, for image embeddings [b, n_image, hidden]."""
        from transformers import DynamicCache

        b = image_embeds.shape[0]
        if image_embeds.shape[1] != self.layout.num_image_tokens or b != batch.text_ids.shape[0]:
            raise UserError(f"image embeddings {tuple(image_embeds.shape)} do not fit a batch of "
                            f"{batch.text_ids.shape[0]} rows with {self.layout.num_image_tokens} image tokens")
        x = torch.cat([image_embeds, self.embed(batch.text_ids).to(image_embeds.dtype)], dim=1)
        cache = DynamicCache.from_legacy_cache(
            tuple((k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in self.prefix_cache))
        h = self.lm.model(inputs_embeds=x, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                          past_key_values=cache, use_cache=True).last_hidden_state
        return self.lm.lm_head(h[batch.loss_rows, batch.loss_positions])

    def loss(self, image_embeds: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Cross-entropy on the answer tokens, each turn weighted equally."""
        ce = F.cross_entropy(self.answer_logits(image_embeds, batch).float(), batch.loss_targets, reduction="none")
        return (ce * batch.loss_weights).sum()
