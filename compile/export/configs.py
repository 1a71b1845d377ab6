"""Optimum OnnxConfigs for the three parts, registered with Optimum's TasksManager the way optimum-onnx
registers its architectures (`TasksManager.create_register("onnx")`).

- `sgm-llava-vision`: CLIP vision tower + LLaVA projector; `sgm-smol-llava-vision`: EfficientNet-Lite0 +
  projector. Both map pixel_values [n, 3, S, S] to image_embeds [n, tokens, hidden].
- `sgm-embed`: the token embedding, input_ids -> inputs_embeds.
- `sgm-llama-decoder`: Optimum's Llama decoder config with `inputs_embeds` in place of `input_ids`, past key
  values in the inputs and present key values in the outputs (one graph for prefill and decode).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from optimum.exporters.onnx.base import OnnxConfig
from optimum.exporters.onnx.model_configs import LlamaOnnxConfig
from optimum.exporters.tasks import TasksManager
from optimum.utils.input_generators import DummyInputGenerator, DummyVisionInputGenerator
from optimum.utils.normalized_config import NormalizedConfig, NormalizedTextConfig, NormalizedVisionConfig
from transformers import PretrainedConfig

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


@register_tasks_manager_onnx("sgm-llama-decoder", TASKS["decoder"], library_name=LIBRARY)
class LlamaEmbedsDecoderOnnxConfig(LlamaOnnxConfig):
    """Optimum's Llama decoder with past, fed `inputs_embeds` instead of `input_ids`.

    The attention mask spans past + current positions; the dummy inputs pad it to that length here
    (Optimum's own padding reads `input_ids`, which this graph does not have).
    """

    DUMMY_INPUT_GENERATOR_CLASSES = (DummyInputsEmbedsGenerator,) + LlamaOnnxConfig.DUMMY_INPUT_GENERATOR_CLASSES
    PAD_ATTENTION_MASK_TO_PAST = False
    DEFAULT_ONNX_OPSET = 17

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        common = super().inputs
        out = OrderedDict({"inputs_embeds": common.pop("input_ids")})
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


def onnx_config(part: str, config: PretrainedConfig) -> OnnxConfig:
    """The registered OnnxConfig of a part (config.model_type names it), built through Optimum's TasksManager."""
    task = TASKS[part]
    constructor = TasksManager.get_exporter_config_constructor(
        exporter="onnx", task=task, model_type=config.model_type if part != "decoder" else "sgm-llama-decoder",
        library_name=LIBRARY)
    kwargs = {"use_past_in_inputs": True} if part == "decoder" else {}
    return constructor(config, **kwargs)
