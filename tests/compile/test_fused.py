"""compile.fused on a tiny random model of each architecture: the fused decoder gives the standard decoder's greedy
tokens and logits.

The builder is onnxruntime-genai 0.15.2's, which scripts/setup installs into .venv (no second environment). The two
architectures of the zoo: a llava-hf model with a Llama language model (tiny-random-llava's recipe with a head size
of 16, since GroupQueryAttention on CPU needs a multiple of 16 and tiny-random-llava's is 8; smol-llava's SmolLM2 is
a Llama too) and tiny-random-gemma-llava (Gemma 3: one KV head, sliding and full attention layers in the config's
own pattern, the window of 16 tokens passed by the image and long prompts). smol-llava itself is checked by
compile.fused whenever its bundle is built (the manifest's `check`, BENCHMARKS.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compile.fused import (GQA_HEAD_MULTIPLE, TOLERANCE, add_fused_decoder, builder_missing,
                           default_builder_python)
from runtime.bundle import load_bundle
from runtime.errors import UserError
from runtime.generate import BundleGenerator
from runtime.protocol import GenerationConfig, GenerationRequest
from runtime.scenes import scene

BUILDER = default_builder_python()
ARCHS = ("llama", "gemma3")


def tiny_llama16(out: Path) -> Path:
    """tiny-random-llava's recipe (calib.models.tiny) with 4 heads of 16 over a hidden size of 64."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from calib.models import tiny
    from calib.models.base import IMAGE_PLACEHOLDER

    tok = tiny._tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                              image_size=30, patch_size=6, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER), vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # larger weights than the default init: logits far apart, so greedy ties cannot decide
        for p in model.model.language_model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def builder() -> str:
    why = builder_missing(BUILDER)
    if why:
        pytest.fail(f"onnxruntime-genai's builder is not importable with {BUILDER} ({why}); run scripts/setup")
    return BUILDER


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from calib.models.tiny_gemma import tiny_gemma_llava_dir

    return {"llama": str(tiny_llama16(tmp_path_factory.mktemp("llama16") / "model")),
            "gemma3": str(tiny_gemma_llava_dir())}


@pytest.fixture(scope="module")
def bundles(models, tmp_path_factory) -> dict[str, Path]:
    from compile.export.bundle import export_bundle

    out = {}
    for arch, model in models.items():
        out[arch] = tmp_path_factory.mktemp(arch) / "bundle"
        export_bundle(model, out[arch])
    return out


@pytest.fixture(scope="module")
def fused(builder, models, bundles, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for arch in ARCHS:
        out[arch] = tmp_path_factory.mktemp(f"{arch}-fused") / "bundle"
        add_fused_decoder(bundles[arch], models[arch], out[arch], precision="fp32", builder_python=builder, threads=1)
    return out


def requests() -> list[GenerationRequest]:
    long_text = " ".join(scene(i).caption for i in range(3))  # past gemma's window of 16 tokens
    return [GenerationRequest("What is in the image?", scene(10).image), GenerationRequest("Say something long."),
            GenerationRequest(long_text), GenerationRequest("Hi")]  # different lengths: run one at a time


def test_refuses_a_bundle_it_cannot_build_for(tiny_bundle: Path, tmp_path: Path, monkeypatch):
    with pytest.raises(UserError, match="fp32 or int4"):
        add_fused_decoder(tiny_bundle, "tiny-random-llava", tmp_path / "x", precision="int8")
    # tiny-random-llava's head size (8) is below what GroupQueryAttention takes on CPU
    assert load_bundle(tiny_bundle).spec.head_dim % GQA_HEAD_MULTIPLE
    with pytest.raises(UserError, match="multiple of 16; this model's is 8"):
        add_fused_decoder(tiny_bundle, "tiny-random-llava", tmp_path / "y")
    monkeypatch.setattr("compile.fused.GQA_HEAD_MULTIPLE", 1)
    with pytest.raises(UserError, match="builder is not importable .* scripts/setup"):
        add_fused_decoder(tiny_bundle, "tiny-random-llava", tmp_path / "z", builder_python="/nonexistent/python")
    assert not any((tmp_path / d).exists() for d in "xyz")


def test_the_builder_comes_with_the_projects_environment(builder):
    import subprocess

    p = subprocess.run([builder, "-c", "import onnxruntime_genai, transformers; "
                                       "print(onnxruntime_genai.__version__, transformers.__version__)"],
                       capture_output=True, text=True, check=True)
    genai, transformers = p.stdout.split()
    assert genai.startswith("0.15.") and transformers.startswith("4.57.")


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_bundle_records_its_decoder_and_check(fused, arch):
    bundle = load_bundle(fused[arch])
    f = bundle.spec.fused_decoder
    assert f is not None and f.logits_positions == "last" and f.kv_buffer == "shared"
    manifest = json.loads((fused[arch] / "manifest.json").read_text())
    assert "GroupQueryAttention" in manifest["fused_decoder"]["contrib_ops"]
    assert manifest["fused_decoder"]["builder_version"].startswith("0.15.")
    check = manifest["check"]
    assert check["identical_greedy"] == check["prompts"] and check["tolerance"] == TOLERANCE["fp32"]
    assert check["max_abs_dlogit_prefill"] <= TOLERANCE["fp32"]["max_abs_dlogit"]
    # the standard decoder stays (TensorRT parses it; teacher-forced scoring needs every position's logits)
    assert (fused[arch] / bundle.spec.graphs["decoder"]).is_file()


def test_gemma3_sliding_and_full_layers_follow_the_config(fused, models):
    import onnx

    from calib.models.tiny_gemma import SLIDING_WINDOW

    config = json.loads((Path(models["gemma3"]) / "config.json").read_text())["text_config"]
    graph = onnx.load(str(fused["gemma3"] / "decoder-fused.onnx"), load_external_data=False).graph
    windows = [next(a.i for a in n.attribute if a.name == "local_window_size")
               for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert windows == [SLIDING_WINDOW if t == "sliding_attention" else -1 for t in config["layer_types"]]


@pytest.mark.parametrize("arch", ARCHS)
def test_same_greedy_tokens_and_logits_as_the_standard_decoder(fused, arch):
    std = BundleGenerator.open(fused[arch], threads=1, decoder="standard")
    fast = BundleGenerator.open(fused[arch], threads=1)
    assert fast.backend.describe()["decoder"] == "fused" and std.backend.describe()["decoder"] == "standard"
    config = GenerationConfig(max_new_tokens=12)
    a = std.generate(requests(), config)
    b = fast.generate(requests(), config)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert sum(len(r.token_ids) for r in a) >= 12
    # logits along the greedy path, step by step: the fused decoder's last-position logits against the standard
    # decoder's, the same inputs_embeds fed to both
    worst = 0.0
    for request, result in zip(requests(), a):
        prompt = std.request_embeds(request)
        embeds = np.concatenate([prompt, std.backend.embed(np.asarray([result.token_ids], np.int64))[0]]) \
            if result.token_ids else prompt
        for n in sorted({len(prompt), len(embeds)}):
            x = embeds[None, :n]
            mask, pos = np.ones((1, n), np.int64), np.arange(n)[None]
            la = std.backend.decode(x, mask, pos, std.backend.empty_cache(1))[0]
            lb = fast.backend.decode(x, mask, pos, fast.backend.empty_cache(1, capacity=n))[0]
            la, lb = np.asarray(la), np.asarray(lb)
            last_a, last_b = la.reshape(-1, la.shape[-1])[-1], lb.reshape(-1, lb.shape[-1])[-1]
            worst = max(worst, float(np.abs(last_a - last_b).max()))
    assert worst < 1e-3, worst
    # teacher-forced scoring needs every position's logits: it goes through the standard decoder
    [(nll_fast, n_fast)], [(nll_std, n_std)] = fast.nll(["a b c d"]), std.nll(["a b c d"])
    assert n_fast == n_std and nll_fast == pytest.approx(nll_std, rel=1e-5)


def test_a_decoder_outside_the_tolerance_is_refused(builder, models, bundles, tmp_path, monkeypatch):
    monkeypatch.setitem(TOLERANCE, "fp32", {"max_abs_dlogit": 0.0, "identical_greedy": True})
    out = tmp_path / "fused"
    with pytest.raises(UserError, match="does not match the bundle's standard decoder .* nothing was written"):
        add_fused_decoder(bundles["gemma3"], models["gemma3"], out, precision="fp32", builder_python=builder,
                          threads=1)
    assert not out.exists()


def test_rtn_options_follow_the_bundles_quantization():
    from compile.fused import rtn_options

    assert rtn_options({"method": "rtn", "symmetric": False, "block_size": 32, "accuracy_level": 4}) == \
        ["is_symmetric=false", "block_size=32", "accuracy_level=4"]
    assert rtn_options({"method": "rtn", "symmetric": True, "block_size": 128, "accuracy_level": 1}) == \
        ["is_symmetric=true", "block_size=128", "accuracy_level=1"]
    assert rtn_options({"method": "gguf-exact"}) == []


def test_int4_fused_decoder_holds_the_standard_decoders_rtn_weights(builder, models, bundles, tmp_path):
    """gemma-llava's int4 is compile.quantize's RTN: the builder, told the same rounding (asymmetric, blocks of 32,
    accuracy level 4), writes the same int4 weights, so the two decoders agree to float noise (the builder's
    default symmetric RTN gave gemma-llava a max |d logit| of 23.6 and was refused)."""
    from compile.quantize import QuantSpec, quantize_bundle

    int4 = tmp_path / "int4"
    quantize_bundle(bundles["gemma3"], int4, QuantSpec("int4"))
    manifest = add_fused_decoder(int4, models["gemma3"], tmp_path / "int4-fused", builder_python=builder, threads=1)
    assert "is_symmetric=false" in manifest["fused_decoder"]["extra_options"]
    assert "MatMulNBits" in manifest["fused_decoder"]["contrib_ops"]
    check = manifest["check"]
    assert check["identical_greedy"] == check["prompts"] and check["max_abs_dlogit_prefill"] < 1e-3


def test_int4_fused_decoder_holds_a_gptq_bundles_blocks(builder, models, bundles, tmp_path):
    """A gptq bundle's blocks cannot be re-derived from the float weights (they depend on calibration activations),
    so the fused decoder takes them from the standard decoder (weights "bundle", auto for the gptq method): the two
    decoders then hold the same int4 weights and agree to float noise."""
    from compile.quantize import QuantSpec, quantize_bundle

    with pytest.raises(UserError, match="--weights bundle copies the MatMulNBits blocks .* fp32, method None"):
        add_fused_decoder(bundles["gemma3"], models["gemma3"], tmp_path / "x", precision="int4", weights="bundle")
    assert not (tmp_path / "x").exists()
    int4 = tmp_path / "gptq"
    quantize_bundle(bundles["gemma3"], int4, QuantSpec("int4", method="gptq", calibration_items=4))
    assert load_bundle(int4).quantization["method"] == "gptq"
    manifest = add_fused_decoder(int4, models["gemma3"], tmp_path / "gptq-fused", builder_python=builder, threads=1)
    weights = manifest["fused_decoder"]["weights"]
    assert weights["method"] == "the standard decoder's blocks" and sum(weights["converted"].values()) > 0
    check = manifest["check"]
    assert check["identical_greedy"] == check["prompts"] and check["max_abs_dlogit_prefill"] < 0.05
    # the builder's own RTN of the same checkpoint is another set of int4 weights: much further from the bundle's
    rtn = add_fused_decoder(int4, models["gemma3"], tmp_path / "rtn-fused", builder_python=builder, threads=1,
                            weights="builder")["check"]
    assert rtn["max_abs_dlogit_prefill"] > 5 * check["max_abs_dlogit_prefill"], (rtn, check)
