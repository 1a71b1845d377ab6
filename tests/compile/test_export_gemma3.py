"""compile.export, the runtime and int4 RTN on a gemma3_text family model (tiny-random-gemma-llava, seconds).

What differs from the llama-family models: the decoder config is Optimum's gemma3_text one, chosen by the language
model's model_type; one KV head whose head_dim is not hidden / heads; the embedding scaled by sqrt(hidden) inside
embed_tokens; sliding-window layers (window 16 here, so image prompts and a long text prompt run past it); BOS added
by the tokenizer and newline stop ids, carried by runtime.json.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from calib.models import load_model
from calib.models.tiny_gemma import SLIDING_WINDOW, tiny_gemma_llava_dir
from compile.export.bundle import export_bundle
from compile.export import export_graphs, validate_graphs
from compile.export.configs import DECODERS, decoder_name, onnx_config
from compile.export.validate import session
from runtime.errors import UserError
from runtime.generate import BundleGenerator
from runtime.protocol import GenerationConfig, GenerationRequest
from runtime.scenes import scene


@pytest.fixture(scope="module")
def gemma():
    return load_model(str(tiny_gemma_llava_dir()))


@pytest.fixture(scope="module")
def bundle(gemma, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gemma") / "bundle"
    return out, export_bundle(str(tiny_gemma_llava_dir()), out)


def requests() -> list[GenerationRequest]:
    long_text = " ".join(scene(i).caption for i in range(4))  # ~150 tokens: far past the window of 16
    return [GenerationRequest("What is in the image?", scene(10).image), GenerationRequest("Say hi."),
            GenerationRequest(long_text), GenerationRequest("How many shapes are there?", scene(11).image),
            GenerationRequest(long_text, chat=False)]


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_decoder_config_is_chosen_by_the_language_models_model_type(gemma) -> None:
    from optimum.exporters.onnx.model_configs import Gemma3TextOnnxConfig, LlamaOnnxConfig
    from optimum.exporters.tasks import TasksManager

    assert {"llama", "gemma3_text"} <= set(DECODERS)
    for lm in ("llama", "gemma3_text"):
        assert "text-generation-with-past" in TasksManager.get_supported_tasks_for_model_type(
            decoder_name(lm), "onnx", library_name="transformers")
    cfg = gemma.module.language_model.config
    config = onnx_config("decoder", cfg)
    assert isinstance(config, Gemma3TextOnnxConfig) and not isinstance(config, LlamaOnnxConfig)
    assert list(config.inputs)[:5] == ["inputs_embeds", "attention_mask", "position_ids", "past_key_values.0.key",
                                       "past_key_values.0.value"]
    dummy = config.generate_dummy_inputs()
    key = dummy["past_key_values"][0][0]
    assert key.shape[1] == cfg.num_key_value_heads == 1 and key.shape[3] == cfg.head_dim != cfg.hidden_size // 4
    assert dummy["attention_mask"].shape[1] == dummy["inputs_embeds"].shape[1] + key.shape[2]


def test_an_architecture_without_a_decoder_config_is_refused() -> None:
    from transformers import Qwen2Config

    with pytest.raises(UserError, match="'qwen2'.*supports gemma3_text, llama"):
        onnx_config("decoder", Qwen2Config(hidden_size=32, num_attention_heads=4, num_hidden_layers=1))


def test_graphs_have_gemmas_shapes(bundle, gemma) -> None:
    out, manifest = bundle
    cfg = gemma.module.language_model.config
    assert (cfg.num_key_value_heads, cfg.head_dim) == (1, 32) and cfg.hidden_size // cfg.num_attention_heads != 32
    dec = onnx.load(str(out / "decoder.onnx"), load_external_data=False).graph
    ins, outs = {v.name: dims(v) for v in dec.input}, {v.name: dims(v) for v in dec.output}
    assert ins["inputs_embeds"][2] == cfg.hidden_size and outs["logits"][2] == cfg.vocab_size
    for name in (f"past_key_values.{cfg.num_hidden_layers - 1}.value", "past_key_values.0.key"):
        assert ins[name][1:2] == [1] and ins[name][3] == 32 and isinstance(ins[name][2], str)
    spec = json.loads((out / "runtime.json").read_text())
    assert (spec["num_layers"], spec["num_kv_heads"], spec["head_dim"], spec["hidden_size"], spec["vocab_size"]) == (
        4, 1, 32, 64, cfg.vocab_size)
    assert spec["context_length"] == cfg.max_position_embeddings


def test_embed_graph_carries_the_sqrt_hidden_scale(bundle, gemma) -> None:
    ids = np.array([[2, 5, 17, 40]], dtype=np.int64)
    (got,) = session(bundle[0] / "embed.onnx").run(["inputs_embeds"], {"input_ids": ids})
    table = gemma.module.language_model.get_input_embeddings().weight.detach().numpy()
    scale = math.sqrt(gemma.module.language_model.config.hidden_size)
    np.testing.assert_allclose(got[0], table[ids[0]] * scale, rtol=1e-6)
    assert np.abs(got[0] - table[ids[0]]).max() > 0.1


def test_validation_is_tight_and_runs_past_the_sliding_window(bundle) -> None:
    checks = bundle[1]["export"]["validation"]
    long = [c for c in checks if c["what"].startswith(f"past the sliding window ({SLIDING_WINDOW})")]
    assert len(long) == 3 and len(checks) == 8 and all(c["ok"] for c in checks)
    assert all(c["max_abs_diff"] <= 1e-5 for c in checks)  # fp32 tiny model: rounding only
    assert [c["max_abs_diff"] for c in checks if c["name"] == "embed"] == [0.0]
    assert {c["tolerance"] for c in checks if "present" in c["what"]} == {5e-3}
    assert {c["tolerance"] for c in checks if "logits" in c["what"]} == {2e-3}


def test_validation_catches_a_decoder_that_ignores_the_sliding_window(gemma, tmp_path) -> None:
    wide = load_model(str(tiny_gemma_llava_dir()))
    wide.module.language_model.config.sliding_window = 4096
    for layer in wide.decoder_layers():
        if layer.self_attn.sliding_window:
            layer.self_attn.sliding_window = 4096
    export_graphs(wide, tmp_path)
    with pytest.raises(UserError, match="decoder on prefill logits"):
        validate_graphs(gemma, tmp_path)


def test_runtime_json_records_the_prompt_bos_and_stop_ids(bundle, gemma) -> None:
    from tokenizers import Tokenizer

    out = bundle[0]
    spec = json.loads((out / "runtime.json").read_text())
    tok = gemma.tokenizer
    assert spec["prompt"] == {"text_format": "USER: {question}\nASSISTANT:",
                              "image_format": "USER: <image>\n{question}\nASSISTANT:",
                              "image_placeholder": "<image>", "add_special_tokens": True}
    assert spec["eos_token_ids"] == [1, *tok.convert_tokens_to_ids(["\n", "\n\n"])] == list(gemma.eos_token_ids)
    assert len(set(spec["eos_token_ids"])) == 3 and spec["pad_token_id"] == 0
    saved = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = gemma.chat_prompt("Is the cat on the mat?", True)
    ids = saved.encode(text, add_special_tokens=True).ids
    assert ids[0] == tok.bos_token_id == 2 and ids.count(2) == 1
    assert [i for t in ids for i in ([t] * 49 if t == gemma.image_token_id else [t])] == gemma.tokenize(text)


def test_runtime_generates_like_pytorch_past_the_sliding_window(bundle, gemma) -> None:
    gen = BundleGenerator.open(bundle[0], threads=1)
    reqs = requests()
    lengths = [len(gen.tokenizer.request_ids(r)) for r in reqs]
    assert max(lengths) > 8 * SLIDING_WINDOW and min(lengths) < SLIDING_WINDOW
    for config in (GenerationConfig(max_new_tokens=40),
                   GenerationConfig(max_new_tokens=24, do_sample=True, temperature=0.8, top_p=0.9, seed=3)):
        ref = gemma.generate(reqs, config)
        got = gen.generate(reqs, config)
        assert [r.token_ids for r in got] == [r.token_ids for r in ref]
        assert [r.text for r in got] == [r.text for r in ref]
    assert sum(len(r.token_ids) for r in gemma.generate(reqs, GenerationConfig(max_new_tokens=40))) >= 4 * 30
    for req in reqs[2:4]:  # one at a time as well: no padding in play
        config = GenerationConfig(max_new_tokens=40)
        assert gen.generate([req], config)[0].token_ids == gemma.generate([req], config)[0].token_ids
    texts = ["The cat sat on the mat.", reqs[2].prompt]
    for (a, n), (b, m) in zip(gen.nll(texts), gemma.nll(texts)):
        assert n == m and abs(a - b) <= 1e-4 * max(1.0, abs(b))


def test_a_chunked_prefill_across_the_window_generates_like_pytorch(bundle, gemma) -> None:
    """Prefill in runs of 5 positions (the runtime's bound on all-position logits, forced small): chunks cross the
    window of 16 on every long prompt, and the tokens are still PyTorch's."""
    vocab = gemma.module.language_model.config.vocab_size
    gen = BundleGenerator.open(bundle[0], threads=1, max_logits_bytes=5 * 5 * vocab * 4)
    assert gen.backend.prefill_chunk(5) == 5
    config = GenerationConfig(max_new_tokens=24)
    assert [r.token_ids for r in gen.generate(requests(), config)] == [
        r.token_ids for r in gemma.generate(requests(), config)]


def test_int4_rtn_quantizes_the_gemma_bundle(bundle, tmp_path) -> None:
    from compile.quantize import QuantSpec, quantize_bundle

    manifest = quantize_bundle(bundle[0], tmp_path / "int4", QuantSpec("int4"), threads=1)
    p = manifest["precision"]
    assert p["method"] == "rtn" and p["graphs"]["decoder"]["quantized"] == 4 * 7 + 1  # q k v o gate up down, lm_head
    assert p["graphs"]["embed"]["op"] == "GatherBlockQuantized" and p["graphs"]["embed"]["quantized"] == 1
    c = manifest["check"]
    assert c["positions"] > 500 and c["top1_agreement"] >= 0.5  # random weights: flat logits, near ties
    assert abs(c["mean_nll_new"] - c["mean_nll_source"]) < 0.01 * c["mean_nll_source"]
    gen = BundleGenerator.open(tmp_path / "int4", threads=1)
    [r] = gen.generate([requests()[2]], GenerationConfig(max_new_tokens=8))
    assert len(r.token_ids) > 0


def test_a_folded_gemma_checkpoint_exports(gemma, random_experts, tmp_path) -> None:
    from calib.experts import save_experts
    from compile.fold import fold_to_dir

    save_experts(random_experts(gemma), tmp_path / "experts")
    folded = fold_to_dir(str(tiny_gemma_llava_dir()), tmp_path / "experts", tmp_path / "detox")
    assert json.loads((tmp_path / "detox" / "config.json").read_text())["model_type"] == "gemma-llava"
    manifest = export_bundle(str(tmp_path / "detox"), tmp_path / "bundle")
    assert manifest["model"]["folded"] is True and manifest["model_type"] == "gemma-llava"
    assert manifest["model"]["mlp_weights_sha256"] == folded["model"]["mlp_weights_sha256"]
    assert all(c["ok"] for c in manifest["export"]["validation"])
