"""Teacher-forced answer logits of a family model's language model on packed batches.

The language model is frozen, or carries trainable LoRA adapters (`calib.align.lora`). The prefix (system prompt
and user header) is shared by every row: with a frozen model its key/value cache is computed once, with
adapters once per step (it then depends on them). Only the hidden states at the loss positions go through the
LM head, so a batch costs one decoder pass over its rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from calib.align.packing import Layout, PackedBatch
from calib.models.base import MultimodalModel
from runtime.errors import UserError


class FrozenLM:
    """A family model's language model with frozen weights (trainable LoRA adapters aside) and a shared prefix."""

    def __init__(self, model: MultimodalModel, layout: Layout, adapters: bool = False):
        lm = getattr(model.module, "language_model", None)
        if lm is None or not hasattr(lm, "lm_head"):
            raise UserError(f"{model.name} has no language_model with an lm_head: projector training supports "
                            "smol-llava and gemma-llava only")
        for name, p in model.module.named_parameters():
            p.requires_grad_(adapters and "lora_" in name)
        self.lm = lm.eval()
        self.embed = model.embed_tokens
        self.layout = layout
        self.adapters = adapters
        self.prefix_cache = None if adapters else self._prefix()

    def _prefix(self) -> tuple:
        ids = torch.tensor([self.layout.prefix], dtype=torch.long)
        with torch.set_grad_enabled(self.adapters):
            out = self.lm.model(inputs_embeds=self.embed(ids), attention_mask=torch.ones_like(ids),
                                position_ids=torch.arange(ids.shape[1])[None], use_cache=True)
        return tuple((k, v) for k, v in out.past_key_values.to_legacy_cache())

    def answer_logits(self, image_embeds: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Logits [m, vocab] at the batch's loss positions, for image embeddings [b, n_image, hidden]."""
        from transformers import DynamicCache

        b = image_embeds.shape[0]
        if image_embeds.shape[1] != self.layout.num_image_tokens or b != batch.text_ids.shape[0]:
            raise UserError(f"image embeddings {tuple(image_embeds.shape)} do not fit a batch of "
                            f"{batch.text_ids.shape[0]} rows with {self.layout.num_image_tokens} image tokens")
        x = torch.cat([image_embeds, self.embed(batch.text_ids).to(image_embeds.dtype)], dim=1)
        prefix = self.prefix_cache if self.prefix_cache is not None else self._prefix()
        cache = DynamicCache.from_legacy_cache(
            tuple((k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in prefix))
        h = self.lm.model(inputs_embeds=x, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                          past_key_values=cache, use_cache=True).last_hidden_state
        return self.lm.lm_head(h[batch.loss_rows, batch.loss_positions])

    def loss(self, image_embeds: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Cross-entropy on the answer tokens, each turn weighted equally."""
        ce = F.cross_entropy(self.answer_logits(image_embeds, batch).float(), batch.loss_targets, reduction="none")
        return (ce * batch.loss_weights).sum()
