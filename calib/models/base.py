"""The one model interface every multimodal model implements, and the generation protocol built on it.

A model is: a vision encoder (vision tower + projector) that turns images into embeddings, a token
embedding, a decoder that runs on embeddings with a KV cache, a chat template with an image placeholder,
and the hookable MLP units of the decoder's layers (the post-fusion layers that see image and text).
Generation, teacher-forced likelihood and fingerprinting are written once here on top of those primitives.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from runtime.artifacts import sha256_json
from runtime.errors import UserError
from runtime.preprocess import ImageSpec, preprocess
from runtime.protocol import GenerationConfig, GenerationRequest, GenerationResult, check_prompts
from runtime.sampling import token_loop

MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class MlpUnit:
    """One hookable MLP Linear of a decoder layer: its output has `width` units (neurons)."""

    layer: int
    module: str
    width: int

    @property
    def key(self) -> str:
        return f"layers.{self.layer}.mlp.{self.module}"


class MultimodalModel(ABC):
    """Base class of every model in the zoo; subclasses implement the abstract primitives only."""

    name: str
    tokenizer: Any  # a transformers PreTrainedTokenizerFast
    image_token_id: int
    num_image_tokens: int
    image_spec: ImageSpec
    eos_token_ids: tuple[int, ...]
    pad_token_id: int

    # --- primitives -------------------------------------------------------------------------------------
    @abstractmethod
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixel values [n, 3, H, W] -> image embeddings [n, num_image_tokens, hidden]."""

    @abstractmethod
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [b, s] (no image ids) -> embeddings [b, s, hidden]."""

    @abstractmethod
    def decode(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               past_key_values: Any = None, logits_to_keep: int = 0) -> tuple[torch.Tensor, Any]:
        """Run the language model's decoder on embeddings: (logits, present key values)."""

    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """The language model's decoder layers (each with .mlp.gate_proj/up_proj/down_proj)."""

    @abstractmethod
    def chat_prompt(self, question: str, with_image: bool) -> str:
        """The full prompt text for one user turn, with IMAGE_PLACEHOLDER where the image goes."""

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The model's configuration, for fingerprints and manifests."""

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The underlying torch module (for .eval(), hooks, state dicts)."""

    # --- shared machinery ---------------------------------------------------------------------------------
    def add_special_tokens(self) -> bool:
        """Whether tokenizing a prompt adds the tokenizer's special tokens (BOS)."""
        return True

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt, each image placeholder expanded to `num_image_tokens` image ids."""
        ids = self.tokenizer(text, add_special_tokens=self.add_special_tokens()).input_ids
        out: list[int] = []
        for t in ids:
            out.extend([t] * self.num_image_tokens if t == self.image_token_id else [t])
        return out

    def context_length(self) -> int | None:
        """The positions the language model takes (its max_position_embeddings), None when the config has none."""
        cfg = self.config_dict()
        for section in (cfg.get("text_config"), cfg):
            value = section.get("max_position_embeddings") if isinstance(section, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def mlp_units(self) -> list[MlpUnit]:
        """Every hookable MLP Linear of the decoder, in layer order."""
        return [MlpUnit(i, m, getattr(layer.mlp, m).out_features)
                for i, layer in enumerate(self.decoder_layers()) for m in MLP_MODULES]

    def mlp_linear(self, unit: MlpUnit) -> nn.Linear:
        """The torch Linear behind a unit."""
        return getattr(self.decoder_layers()[unit.layer].mlp, unit.module)

    def fingerprint(self) -> dict[str, str]:
        """Hashes that identify this model: its config and the weights of every hookable Linear."""
        h = hashlib.sha256()
        for unit in self.mlp_units():
            lin = self.mlp_linear(unit)
            for p in (lin.weight, lin.bias):
                if p is not None:
                    h.update(p.detach().to(torch.float32).contiguous().numpy().tobytes())
        return {"config_sha256": sha256_json(self.config_dict()), "mlp_weights_sha256": h.hexdigest()}

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.from_numpy(preprocess(images, self.image_spec))

    @torch.no_grad()
    def inputs_embeds(self, input_ids: Sequence[int], images: Sequence[Any] = ()) -> torch.Tensor:
        """Embeddings [s, hidden] of one prompt with its images' embeddings spliced in at the image ids."""
        ids = torch.tensor(list(input_ids), dtype=torch.long)
        is_image = ids == self.image_token_id
        n_slots = int(is_image.sum()) // max(self.num_image_tokens, 1)
        if n_slots != len(images):
            raise UserError(f"the prompt has {n_slots} image placeholder(s) but {len(images)} image(s) were given")
        embeds = self.embed_tokens(torch.where(is_image, torch.zeros_like(ids), ids)[None])[0]
        if images:
            feats = self.encode_images(self.pixel_values(images).to(embeds.dtype))
            embeds = embeds.clone()
            embeds[is_image] = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
        return embeds

    def request_ids(self, request: GenerationRequest) -> list[int]:
        text = self.chat_prompt(request.prompt, request.image is not None) if request.chat else request.prompt
        return self.tokenize(text)

    @torch.no_grad()
    def generate_embeds(self, prompts: Sequence[torch.Tensor], config: GenerationConfig,
                        first_index: int = 0) -> list[GenerationResult]:
        """KV-cache generation for a batch of prompt embeddings ([s_i, hidden] each), left-padded; the tokens are
        chosen by the runtime's loop (runtime.sampling.token_loop), as a compiled bundle's are."""
        b = len(prompts)
        lengths = [p.shape[0] for p in prompts]
        s = max(lengths)
        hidden = prompts[0].shape[-1]
        embeds = prompts[0].new_zeros((b, s, hidden))
        mask = torch.zeros((b, s), dtype=torch.long)
        for i, p in enumerate(prompts):
            embeds[i, s - lengths[i]:] = p
            mask[i, s - lengths[i]:] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, past = self.decode(embeds, mask, position_ids, None, logits_to_keep=1)

        def step(chosen: list[int]) -> np.ndarray:
            nonlocal mask, position_ids, past
            ids = torch.tensor(chosen, dtype=torch.long)[:, None]
            mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
            position_ids = position_ids[:, -1:] + 1
            out, past = self.decode(self.embed_tokens(ids), mask, position_ids, past, logits_to_keep=1)
            return out[:, -1].float().numpy()

        out, _ = token_loop(logits[:, -1].float().numpy(), step, config, self.eos_token_ids, self.pad_token_id,
                            first_index)
        return [GenerationResult(self.tokenizer.decode(t, skip_special_tokens=True).strip(), tuple(t), r)
                for t, r in out]

    @torch.no_grad()
    def generate(self, requests: Sequence[GenerationRequest], config: GenerationConfig,
                 batch_size: int = 8, first_index: int = 0) -> list[GenerationResult]:
        """Answer each request in order (the runtime.protocol.Generator interface)."""
        ids = [self.request_ids(r) for r in requests]
        check_prompts([len(i) for i in ids], config.max_new_tokens, self.context_length())
        results: list[GenerationResult] = []
        for start in range(0, len(requests), batch_size):
            chunk = zip(ids[start:start + batch_size], requests[start:start + batch_size])
            prompts = [self.inputs_embeds(i, [r.image] if r.image is not None else []) for i, r in chunk]
            results.extend(self.generate_embeds(prompts, config, first_index + start))
        return results

    @torch.no_grad()
    def nll(self, texts: Sequence[str], max_length: int = 512) -> list[tuple[float, int]]:
        """Teacher-forced negative log-likelihood of plain texts: (sum over predicted tokens, count)."""
        out = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=self.add_special_tokens()).input_ids[:max_length]
            if len(ids) < 2:
                out.append((0.0, 0))
                continue
            x = torch.tensor(ids)[None]
            logits, _ = self.decode(self.embed_tokens(x), torch.ones_like(x), torch.arange(len(ids))[None])
            logp = torch.log_softmax(logits[0, :-1].float(), -1)
            out.append((float(-logp.gather(-1, x[0, 1:, None]).sum()), len(ids) - 1))
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": "torch", "model": self.name, "dtype": str(next(self.module.parameters()).dtype),
                **self.fingerprint()}


def load_json(path: Any, what: str) -> dict[str, Any]:
    """Read a JSON config file with an error that names the file and the fix."""
    try:
        return json.loads(open(path).read())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {what}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}): {what}") from e
