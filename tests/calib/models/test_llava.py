"""The llava-hf implementation of the model interface, on tiny-random-llava."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from calib.models import load_model, tiny_random_llava_dir
from runtime.errors import UserError
from runtime.protocol import GenerationConfig, GenerationRequest


def _image(seed: int, size=(40, 52)) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((*size, 3)) * 255).astype("uint8"))


def test_units_and_shapes(tiny_llava):
    units = tiny_llava.mlp_units()
    assert [(u.layer, u.module, u.width) for u in units] == [
        (0, "gate_proj", 48), (0, "up_proj", 48), (0, "down_proj", 32),
        (1, "gate_proj", 48), (1, "up_proj", 48), (1, "down_proj", 32)]
    assert tiny_llava.mlp_linear(units[2]) is tiny_llava.hf.model.language_model.layers[0].mlp.down_proj
    feats = tiny_llava.encode_images(tiny_llava.pixel_values([_image(0), _image(1)]))
    assert feats.shape == (2, tiny_llava.num_image_tokens, 32) and tiny_llava.num_image_tokens == 25


def test_encode_images_matches_transformers(tiny_llava):
    px = tiny_llava.pixel_values([_image(0)])
    ours = tiny_llava.encode_images(px)
    theirs = tiny_llava.hf.model.get_image_features(px, vision_feature_layer=-2, vision_feature_select_strategy="default")
    theirs = theirs[0] if isinstance(theirs, (list, tuple)) else theirs
    torch.testing.assert_close(ours, theirs.reshape(ours.shape), rtol=0, atol=0)


def test_preprocessing_matches_clip_image_processor(tiny_llava):
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor.from_pretrained(tiny_random_llava_dir())
    for img in (_image(2, (40, 52)), _image(3, (61, 33))):
        ref = proc(images=img, return_tensors="np")["pixel_values"]
        ours = tiny_llava.pixel_values([img]).numpy()
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_prompt_expands_the_image_placeholder(tiny_llava):
    ids = tiny_llava.tokenize(tiny_llava.chat_prompt("What is this?", with_image=True))
    assert ids[0] == tiny_llava.tokenizer.bos_token_id
    assert ids.count(tiny_llava.image_token_id) == 25
    with pytest.raises(UserError, match="1 image placeholder"):
        tiny_llava.inputs_embeds(ids, [])


def test_forward_with_image_matches_transformers(tiny_llava):
    """Our splice of image embeddings + decode equals LlavaForConditionalGeneration's own forward."""
    ids = tiny_llava.tokenize(tiny_llava.chat_prompt("What is this?", with_image=True))
    img = _image(4)
    embeds = tiny_llava.inputs_embeds(ids, [img])[None]
    n = embeds.shape[1]
    logits, _ = tiny_llava.decode(embeds, torch.ones(1, n, dtype=torch.long), torch.arange(n)[None])
    with torch.no_grad():
        ref = tiny_llava.hf(input_ids=torch.tensor([ids]), pixel_values=tiny_llava.pixel_values([img])).logits
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)


def test_batched_generation_equals_one_by_one(tiny_llava):
    reqs = [GenerationRequest("What is in the image?", _image(5)), GenerationRequest("Hello there, how are you?"),
            GenerationRequest("Describe the picture.", _image(6))]
    cfg = GenerationConfig(max_new_tokens=10)
    batched = tiny_llava.generate(reqs, cfg, batch_size=3)
    single = [tiny_llava.generate([r], cfg)[0] for r in reqs]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert all(r.finish_reason == ("length" if len(r.token_ids) == 10 else "eos") for r in batched)
    assert len({r.token_ids for r in batched}) > 1


def test_image_changes_the_logits(tiny_llava):
    ids = tiny_llava.tokenize(tiny_llava.chat_prompt("What is this?", with_image=True))
    n = len(ids)
    outs = []
    for seed in (7, 8):
        e = tiny_llava.inputs_embeds(ids, [_image(seed)])[None]
        outs.append(tiny_llava.decode(e, torch.ones(1, n, dtype=torch.long), torch.arange(n)[None])[0][0, -1])
    assert (outs[0] - outs[1]).abs().max() > 1e-4


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_llava):
    reqs = [GenerationRequest("Hello there"), GenerationRequest("What is in the image?", _image(9))]
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, top_p=0.9, seed=3)
    a = tiny_llava.generate(reqs, cfg)
    b = tiny_llava.generate(reqs, cfg, batch_size=1)
    c = tiny_llava.generate(reqs, GenerationConfig(max_new_tokens=8, do_sample=True, top_p=0.9, seed=4))
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_path_loading_equals_name_loading(tiny_llava):
    by_path = load_model(str(tiny_random_llava_dir()))
    assert by_path.fingerprint() == tiny_llava.fingerprint()


def test_nll_is_positive_and_counts_tokens(tiny_llava):
    [(nll, n)] = tiny_llava.nll(["The cat sat on the mat."])
    assert n == len(tiny_llava.tokenizer("The cat sat on the mat.").input_ids) - 1
    assert nll / n > 1.0
