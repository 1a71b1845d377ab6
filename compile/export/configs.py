"""Optimum OnnxConfigs for the three parts, registered with Optimum's TasksManager the way optimum-onnx
registers its architectures (`TasksManager.create_register("onnx")`).

- `sgm-llava-vision`: CLIP vision tower + LLaVA projector; `sgm-smol-llava-vision`: EfficientNet-Lite0 +
  projector. Both map pixel_values [n, 3, S, S] to image_embeds [n, tokens, hidden].
- `sgm-embed`: the token embedding, input_ids -> inputs_embeds (with any scale the model applies inside it).
- `sgm-<model_type>-decoder`, one per language-model architecture, chosen by the language model's
  `model_type` (`register_decoder`): Optimum's own config for that architecture with `inputs_embeds` in place of
  `input_ids`, explicit position ids, past key values in the inputs and present key values in the outputs (one
  graph for prefill and decode). Registered: `llama` (LLaVA-1.5, smol-llava) and `gemma3_text` (gemma-llava).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from optimum.exporters.onnx.base import OnnxConfig
from optimum.exporters.onnx.model_configs import Gemma3TextOnnxConfig, LlamaOnnxConfig
from optimum.exporters.tasks import TasksManager
from optimum.utils.input_generators import DummyInputGenerator, DummyVisionInputGenerator
from optimum.utils.normalized_config import NormalizedConfig, NormalizedTextConfig, NormalizedVisionConfig
from transformers import PretrainedConfig

from runtime.errors import UserError

register_tasks_manager_onnx = TasksManager.create_register("onnx")

LIBRARY = "transformers"
TASKS = {"vision": "feature-extraction", "embed": "feature-extraction", "decoder": "text-generation-with-past"}


class DummyInputsEmbedsGenerator(DummyInputGenerator):
    """Random `inputs_embeds` [batch, sequence, hidden] for the decoder."""

    SUPPORTED_INPUT_NAMES = ("inputs_embeds",)

    def __init__(self, task: str, normalized_config: NormalizedConfig, batch_size: int = 2,
                 sequence_length: int = 16, **kwargs: Any):
        self.task = task
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.hidden_size = normalized_config.hidden_size

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        return self.random_float_tensor([self.batch_size, self.sequence_length, self.hidden_size],
                                        framework=framework, dtype=float_dtype)


class DummyTokenIdsGenerator(DummyInputGenerator):
    """Random token ids [batch, sequence] below the vocabulary size."""

    SUPPORTED_INPUT_NAMES = ("input_ids",)

    def __init__(self, task: str, normalized_config: NormalizedConfig, batch_size: int = 2,
                 sequence_length: int = 16, **kwargs: Any):
        self.task = task
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.vocab_size = normalized_config.vocab_size

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        return self.random_int_tensor([self.batch_size, self.sequence_length], self.vocab_size,
                                      framework=framework, dtype=int_dtype)


class VisionProjectorOnnxConfig(OnnxConfig):
    """Vision tower + projector: pixel_values -> image_embeds (only the batch axis is dynamic)."""

    NORMALIZED_CONFIG_CLASS = NormalizedVisionConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyVisionInputGenerator,)
    DEFAULT_ONNX_OPSET = 17

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return {"pixel_values": {0: "batch_size"}}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {"image_embeds": {0: "batch_size"}}


@register_tasks_manager_onnx("sgm-llava-vision", TASKS["vision"], library_name=LIBRARY)
class LlavaVisionOnnxConfig(VisionProjectorOnnxConfig):
    """CLIP ViT (hidden states of `vision_feature_layer`, CLS dropped) + LLaVA's multimodal projector."""



@register_tasks_manager_onnx("sgm-smol-llava-vision", TASKS["vision"], library_name=LIBRARY)
class SmolLlavaVisionOnnxConfig(VisionProjectorOnnxConfig):
    """EfficientNet-Lite0 features (7 x 7 x 1280, flattened to 49 tokens) + the two-layer projector."""



@register_tasks_manager_onnx("sgm-embed", TASKS["embed"], library_name=LIBRARY)
class TokenEmbeddingOnnxConfig(OnnxConfig):
    """The language model's token embedding: input_ids -> inputs_embeds."""

    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyTokenIdsGenerator,)
    DEFAULT_ONNX_OPSET = 17

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return {"input_ids": {0: "batch_size", 1: "sequence_length"}}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {"inputs_embeds": {0: "batch_size", 1: "sequence_length"}}


# The language model's model_type -> its decoder config (filled by register_decoder).
DECODERS: dict[str, type[OnnxConfig]] = {}


def decoder_name(lm_model_type: str) -> str:
    """The TasksManager model type of the decoder part for a language model of `lm_model_type`."""
    return f"sgm-{lm_model_type}-decoder"


def register_decoder(lm_model_type: str) -> Callable[[type[OnnxConfig]], type[OnnxConfig]]:
    """Register a decoder config for language models of `lm_model_type`, here and with Optimum's TasksManager."""

    def register(cls: type[OnnxConfig]) -> type[OnnxConfig]:
        register_tasks_manager_onnx(decoder_name(lm_model_type), TASKS["decoder"], library_name=LIBRARY)(cls)
        DECODERS[lm_model_type] = cls
        return cls

    return register


def check_decoder_supported(lm_model_type: str, model_name: str | None = None) -> None:
    """Refuse a language model whose architecture has no decoder config."""
    if lm_model_type not in DECODERS:
        who = f"{model_name}: its language model" if model_name else "the language model"
        raise UserError(f"{who} is {lm_model_type!r}; the decoder export supports "
                        f"{', '.join(sorted(DECODERS))} language models (compile.export.configs.register_decoder "
                        "adds an architecture)")


class EmbedsDecoderMixin:
    """Turns an Optimum text-decoder config (the next base class) into the bundle's decoder: `inputs_embeds` in
    place of `input_ids`, then `attention_mask` (past + current positions), `position_ids` (left-padded batches
    need them explicit) and the past key values.

    The dummy attention mask is padded to past + current length here (Optimum's own padding reads `input_ids`,
    which this graph does not have).
    """

    PAD_ATTENTION_MASK_TO_PAST = False
    DEFAULT_ONNX_OPSET = 17

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        common = super().inputs
        out = OrderedDict({"inputs_embeds": common.pop("input_ids"), "attention_mask": common.pop("attention_mask"),
                           "position_ids": common.pop("position_ids", {0: "batch_size", 1: "sequence_length"})})
        out.update(common)
        return out

    def generate_dummy_inputs(self, framework: str = "pt", **kwargs: Any) -> dict[str, Any]:
        dummy = super().generate_dummy_inputs(framework=framework, **kwargs)
        if self.use_past_in_inputs and "past_key_values" in dummy:
            seq = dummy["inputs_embeds"].shape[1]
            past = dummy["past_key_values"][0][0].shape[-2]
            dummy["attention_mask"] = DummyInputGenerator.pad_input_on_dim(
                dummy["attention_mask"], desired_length=past + seq, dim=1)
        return dummy


@register_decoder("llama")
class LlamaEmbedsDecoderOnnxConfig(EmbedsDecoderMixin, LlamaOnnxConfig):
    """Optimum's Llama decoder with past, fed `inputs_embeds` (LLaVA-1.5, smol-llava)."""

    DUMMY_INPUT_GENERATOR_CLASSES = (DummyInputsEmbedsGenerator,) + LlamaOnnxConfig.DUMMY_INPUT_GENERATOR_CLASSES


@register_decoder("gemma3_text")
class Gemma3TextEmbedsDecoderOnnxConfig(EmbedsDecoderMixin, Gemma3TextOnnxConfig):
    """Optimum's Gemma 3 text decoder with past, fed `inputs_embeds` (gemma-llava).

    Every layer's key/values are kept in full (Optimum passes the past as a plain DynamicCache); sliding-window
    layers see only the last `sliding_window` positions through the attention mask, which is what PyTorch computes
    with its sliding-window cache. The embedding's sqrt(hidden) scale lives in the embed graph, not here.
    """

    DUMMY_INPUT_GENERATOR_CLASSES = (DummyInputsEmbedsGenerator,) + Gemma3TextOnnxConfig.DUMMY_INPUT_GENERATOR_CLASSES


def onnx_config(part: str, config: PretrainedConfig) -> OnnxConfig:
    """The registered OnnxConfig of a part, built through Optimum's TasksManager: the vision and embed parts'
    configs name theirs in `model_type`; the decoder's is the one registered for the language model's model_type."""
    task = TASKS[part]
    if part == "decoder":
        check_decoder_supported(config.model_type)
    name = decoder_name(config.model_type) if part == "decoder" else config.model_type
    constructor = TasksManager.get_exporter_config_constructor(exporter="onnx", task=task, model_type=name,
                                                               library_name=LIBRARY)
    kwargs = {"use_past_in_inputs": True} if part == "decoder" else {}
    return constructor(config, **kwargs)
