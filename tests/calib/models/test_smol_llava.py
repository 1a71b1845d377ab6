"""The embedded default: real SmolLM2 behaviour on text, a real EfficientNet-Lite0 tower on images."""
from __future__ import annotations

import json

import pytest
import torch

from calib.models import efficientnet, smol_llava_dir
from calib.models.smollm2 import smollm2_dir
from runtime.images import open_image
from runtime.protocol import GenerationConfig, GenerationRequest


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(smollm2_dir()).eval(), AutoTokenizer.from_pretrained(smollm2_dir())


def _tokens_per_patch() -> int:
    return json.loads((smol_llava_dir() / "config.json").read_text())["projector_config"].get("tokens_per_patch", 1)


def test_unit_list(smol_llava):
    units = smol_llava.mlp_units()
    assert len(units) == 90
    assert [(u.layer, u.module, u.width) for u in units[:3]] == [(0, "gate_proj", 1536), (0, "up_proj", 1536),
                                                                 (0, "down_proj", 576)]
    assert {u.layer for u in units} == set(range(30))
    assert {(u.module, u.width) for u in units} == {("gate_proj", 1536), ("up_proj", 1536), ("down_proj", 576)}


def test_knows_the_capital_of_france(smol_llava):
    [r] = smol_llava.generate([GenerationRequest("The capital of France is", chat=False)],
                              GenerationConfig(max_new_tokens=8))
    assert "Paris" in r.text


@pytest.mark.parametrize("text", ["The capital of France is", "Once upon a time, in a small village,"])
def test_text_path_is_token_identical_to_plain_smollm2(smol_llava, smollm2, text):
    lm, tok = smollm2
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = lm.generate(ids, max_new_tokens=32, do_sample=False, min_new_tokens=32, eos_token_id=None,
                          pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    embeds = smol_llava.inputs_embeds(ids[0].tolist())
    ours = smol_llava.generate_embeds([embeds], GenerationConfig(max_new_tokens=32))[0]
    n = len(ours.token_ids)
    assert n == 32 or ours.finish_reason == "eos"
    assert list(ours.token_ids) == ref[:n]


def test_chat_template_and_image_tokens(smol_llava):
    prompt = smol_llava.chat_prompt("What is this?", with_image=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "<image>\nWhat is this?<|im_end|>" in prompt
    ids = smol_llava.tokenize(prompt)
    assert ids.count(smol_llava.image_token_id) == smol_llava.num_image_tokens == 49 * _tokens_per_patch()
    assert smol_llava.image_token_id == 49152  # past the LM's vocabulary: never embedded, never generated


def test_image_and_text_generation_runs_and_sees_the_image(smol_llava):
    cfg = GenerationConfig(max_new_tokens=12)
    reqs = [GenerationRequest("Describe the image.", open_image(f"skimage:{n}")) for n in ("astronaut", "coffee")]
    results = smol_llava.generate(reqs, cfg)
    assert all(r.text for r in results)
    ids = smol_llava.tokenize(smol_llava.chat_prompt("Describe the image.", True))
    n = len(ids)
    last = [smol_llava.decode(smol_llava.inputs_embeds(ids, [r.image])[None], torch.ones(1, n, dtype=torch.long),
                              torch.arange(n)[None])[0][0, -1] for r in reqs]
    assert (last[0] - last[1]).abs().max() > 0.1


def test_directory_is_plain_and_says_how_the_projector_was_made(smol_llava):
    d = smol_llava_dir()
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "manifest.json"} <= names
    config = json.loads((d / "config.json").read_text())
    assert config["projector_config"]["state"] in ("seeded-random", "trained")
    assert config["vision_config"]["name"] == "efficientnet-lite0"
    assert config["num_image_tokens"] == 49 * config["projector_config"].get("tokens_per_patch", 1)
    assert config["vision_config"]["features"] == efficientnet.FEATURES_ID
    assert config["vision_config"]["feature_dim"] == efficientnet.FEATURE_DIM == 1360


def test_features_are_the_library_head_map_plus_the_pooled_stage4_map(smol_llava):
    """The first 1280 channels are exactly extract_features; the last 80 are block 7's output, pooled and scaled."""
    tower = smol_llava.module.vision_tower
    pixels = smol_llava.pixel_values([open_image("skimage:coffee"), open_image("skimage:astronaut")])
    seen = {}
    handle = tower._blocks[efficientnet.MID_BLOCK].register_forward_hook(lambda m, i, o: seen.update(mid=o))
    with torch.no_grad():
        got = efficientnet.features(tower, pixels)
        head = tower.extract_features(pixels)
    handle.remove()
    assert got.shape == (2, 49, efficientnet.FEATURE_DIM) and seen["mid"].shape == (2, efficientnet.MID_DIM, 14, 14)
    torch.testing.assert_close(got[..., :efficientnet.HEAD_DIM], head.flatten(2).transpose(1, 2), rtol=0, atol=0)
    mid = seen["mid"][0, :, 2:4, 4:6].mean(dim=(1, 2)) * efficientnet.MID_SCALE  # patch (row 1, column 2)
    torch.testing.assert_close(got[0, 1 * 7 + 2, efficientnet.HEAD_DIM:], mid, rtol=1e-5, atol=1e-5)


def test_a_directory_of_another_format_is_refused_with_the_fix(tmp_path):
    from calib.models.smol_llava import SmolLlava
    from runtime.errors import UserError

    d = tmp_path / "old"
    d.mkdir()
    config = json.loads((smol_llava_dir() / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    with pytest.raises(UserError, match="format 1.*rebuild it"):
        SmolLlava.from_dir(d)


def test_k_tokens_per_patch_lay_each_patch_out_as_adjacent_tokens():
    from calib.models.smol_llava import build_projector

    projector = build_projector(16, 8, in_features=12, tokens_per_patch=3)
    x = torch.randn(2, 49, 12)
    out = projector(x)
    assert out.shape == (2, 147, 8)
    flat = projector[:3](x)  # the MLP before the layout: [2, 49, 3 * 8]
    torch.testing.assert_close(out[1, 5 * 3 + 2], flat[1, 5, 16:24], rtol=0, atol=0)  # patch 5, its third token
    assert list(projector.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_a_projector_file_says_its_tokens_per_patch_and_a_broken_one_is_refused(tmp_path):
    from safetensors.torch import save_file

    from calib.models.smol_llava import _projector_state, build_projector
    from runtime.errors import UserError

    good = tmp_path / "p.safetensors"
    save_file(build_projector(16, 8, in_features=12, tokens_per_patch=2).state_dict(), str(good))
    assert _projector_state(good, 8)[1] == 2
    with pytest.raises(UserError, match="not a multiple"):
        _projector_state(good, 6)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="not a smol-llava projector file"):
        _projector_state(bad, 8)
