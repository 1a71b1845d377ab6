"""The three exportable parts of a multimodal model, as torch modules Optimum can trace.

Each part calls the model interface (calib.models.base.MultimodalModel) directly, so the graphs compute
exactly what the PyTorch model computes in `generate`: `encode_images` (vision tower + projector),
`embed_tokens`, and `decode` (the language model on embeddings with a KV cache). The vision and embed parts carry a
small `PretrainedConfig` whose `model_type` names the OnnxConfig registered for it; the decoder carries the
language model's own config, whose `model_type` picks the decoder config (compile.export.configs). What differs
per architecture (the vision config's name, where the text config is) comes from the model's recipe
(compile.recipes).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from calib.models.base import MultimodalModel
from compile.recipes import recipe_for

VISION, EMBED, DECODER = "vision", "embed", "decoder"
PARTS = (VISION, EMBED, DECODER)


def text_config(model: MultimodalModel) -> PretrainedConfig:
    """The language model's transformers config (from the model's recipe); its model_type must have a decoder
    config (compile.export.configs)."""
    from compile.export.configs import check_decoder_supported

    cfg = recipe_for(model).text_config(model)
    check_decoder_supported(cfg.model_type, model.name)
    return cfg


def head_dim(cfg: PretrainedConfig) -> int:
    """Size of one attention head (explicit in Gemma and newer Llama configs, hidden / heads otherwise)."""
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


class VisionPart(nn.Module):
    """pixel_values [n, 3, S, S] -> image_embeds [n, num_image_tokens, hidden]."""

    def __init__(self, model: MultimodalModel):
        super().__init__()
        self.inner = model.module
        self._model = model
        self.config = PretrainedConfig(image_size=model.image_spec.size, num_channels=3,
                                       num_image_tokens=model.num_image_tokens,
                                       hidden_size=text_config(model).hidden_size)
        self.config.model_type = f"sgm-{recipe_for(model).vision}-vision"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._model.encode_images(pixel_values)


class EmbedPart(nn.Module):
    """input_ids [b, s] (int64, no image ids) -> inputs_embeds [b, s, hidden]."""

    def __init__(self, model: MultimodalModel):
        super().__init__()
        self.inner = model.module
        self._model = model
        text = text_config(model)
        self.config = PretrainedConfig(vocab_size=text.vocab_size, hidden_size=text.hidden_size)
        self.config.model_type = "sgm-embed"

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._model.embed_tokens(input_ids)


class DecoderPart(nn.Module):
    """inputs_embeds + attention_mask + position_ids + past key values -> logits + present key values."""

    def __init__(self, model: MultimodalModel):
        super().__init__()
        self.inner = model.module
        self._model = model
        self.config = text_config(model)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past_key_values: Any = None) -> dict[str, Any]:
        logits, present = self._model.decode(inputs_embeds, attention_mask, position_ids, past_key_values)
        return {"logits": logits, "past_key_values": present}


def parts(model: MultimodalModel) -> dict[str, nn.Module]:
    """The three parts of `model`, in bundle order."""
    return {VISION: VisionPart(model), EMBED: EmbedPart(model), DECODER: DecoderPart(model)}
