"""LLaVA-family models through transformers' `LlavaForConditionalGeneration` (llava-hf format).

Serves `llava` (llava-hf/llava-1.5-7b-hf from a local directory, the HF cache or the hub), any llava-hf
directory given by path, and `tiny-random-llava`. The image encoder is called as vision tower + projector
directly (not `get_image_features`), the same computation the ONNX export uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from calib.models.base import IMAGE_PLACEHOLDER, MultimodalModel
from runtime.errors import UserError
from runtime.preprocess import ImageSpec

LLAVA_15_ID = "llava-hf/llava-1.5-7b-hf"


class Llava(MultimodalModel):
    """The model interface over a `LlavaForConditionalGeneration`."""

    def __init__(self, hf: Any, tokenizer: Any, image_spec: ImageSpec, name: str):
        self.hf = hf.eval()
        self.name = name
        self.tokenizer = tokenizer
        self.image_spec = image_spec
        cfg = hf.config
        self.image_token_id = int(cfg.image_token_index)
        if not isinstance(cfg.vision_feature_layer, int):
            raise UserError(f"{name}: several vision feature layers ({cfg.vision_feature_layer}) are not supported")
        vc = cfg.vision_config
        patches = (vc.image_size // vc.patch_size) ** 2
        self.num_image_tokens = patches + (1 if cfg.vision_feature_select_strategy == "full" else 0)
        eos = tokenizer.eos_token_id
        self.eos_token_ids = (int(eos),)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)

    @property
    def module(self) -> nn.Module:
        return self.hf

    def config_dict(self) -> dict[str, Any]:
        """The config without where it was loaded from (`_name_or_path`), so a copied model keeps its fingerprint."""
        return {k: v for k, v in self.hf.config.to_dict().items() if not k.startswith("_")}

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        cfg = self.hf.config
        out = self.hf.model.vision_tower(pixel_values, output_hidden_states=True)
        feats = out.hidden_states[cfg.vision_feature_layer]
        if cfg.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        return self.hf.model.multi_modal_projector(feats)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(input_ids)

    def decode(self, inputs_embeds, attention_mask, position_ids, past_key_values=None, logits_to_keep=0):
        out = self.hf(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=past_key_values, use_cache=True, logits_to_keep=logits_to_keep)
        return out.logits, out.past_key_values

    def decoder_layers(self) -> nn.ModuleList:
        return self.hf.model.language_model.layers

    def chat_prompt(self, question: str, with_image: bool) -> str:
        """LLaVA-1.5's conversation format."""
        return f"USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT:" if with_image else f"USER: {question} ASSISTANT:"

    @classmethod
    def from_pretrained(cls, source: str | Path, name: str | None = None, **hub_kwargs: Any) -> "Llava":
        """Load from a llava-hf directory or a hub id (HF cache first; the hub only if reachable)."""
        from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

        def load(**kw: Any) -> tuple[Any, Any, Any]:
            return (LlavaForConditionalGeneration.from_pretrained(source, dtype=torch.float32, **kw),
                    AutoTokenizer.from_pretrained(source, **kw), AutoImageProcessor.from_pretrained(source, **kw))

        try:
            try:  # a local directory or the HF cache first: no network round trips when the files are here
                hf, tok, proc = load(local_files_only=True, **hub_kwargs)
            except OSError:
                if Path(str(source)).is_dir():
                    raise
                hf, tok, proc = load(**hub_kwargs)
        except OSError as e:
            raise UserError(
                f"could not load {source}: {e}. For a hub model you need internet or a copy in the HF cache "
                f"(huggingface-cli download {source}); or pass the path of a local llava-hf directory."
            ) from e
        spec = ImageSpec.from_hf(proc.to_dict())
        return cls(hf, tok, spec, name=name or str(source))
