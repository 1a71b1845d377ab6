"""Hooks scale module outputs by alpha, equal a row fold of the weights, and are removed on exit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from calib.factors import factor_spec
from calib.intervention import Suppressed, row_scales, suppress
from calib.models import load_model
from runtime.errors import UserError
from runtime.protocol import GenerationConfig, GenerationRequest, Generator


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random-llava")


@pytest.fixture(scope="module")
def inputs(model):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    ids = model.tokenize(model.chat_prompt("What is in the picture?", True))
    embeds = model.inputs_embeds(ids, [image])[None]
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    return embeds, mask, torch.arange(embeds.shape[1])[None]


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    return model.decode(*inputs)[0]


def hook_count(model) -> int:
    return sum(len(model.mlp_linear(u)._forward_hooks) for u in model.mlp_units())


def test_hooks_change_logits_and_are_removed(model, inputs, random_experts) -> None:
    base = logits(model, inputs)
    ex = random_experts(model, factor_spec("aura"))
    with suppress(model, ex) as hooked:
        assert hooked == list(row_scales(ex)) and hook_count(model) == len(hooked) > 0
        hooked_logits = logits(model, inputs)
    assert (hooked_logits - base).abs().max() > 1e-3
    assert hook_count(model) == 0
    assert torch.equal(logits(model, inputs), base)


def test_hooks_removed_on_error(model, inputs, random_experts) -> None:
    with pytest.raises(ValueError):
        with suppress(model, random_experts(model, factor_spec("aura"))):
            raise ValueError("inside")
    assert hook_count(model) == 0


def test_all_ones_is_bit_identical(model, inputs, random_experts) -> None:
    base = logits(model, inputs)
    ex = random_experts(model, factor_spec("sgm", strength=0.0))
    assert row_scales(ex) == {}
    with suppress(model, ex) as hooked:
        assert hooked == []
        assert torch.equal(logits(model, inputs), base)
    ones = row_scales(ex, include_identity=True)
    assert len(ones) == len(model.mlp_units())
    with suppress(model, ones):
        assert hook_count(model) == len(ones)
        assert torch.equal(logits(model, inputs), base)


def test_hook_equals_row_fold(model, inputs, random_experts) -> None:
    """The scales the fold will use: multiplying weight rows (and bias) gives the hooked logits."""
    scales = row_scales(random_experts(model, factor_spec("det0", top_k=30)))
    with suppress(model, scales):
        hooked = logits(model, inputs)
    by_key = {u.key: u for u in model.mlp_units()}
    saved = {k: model.mlp_linear(by_key[k]).weight.detach().clone() for k in scales}
    try:
        with torch.no_grad():
            for k, s in scales.items():
                model.mlp_linear(by_key[k]).weight.mul_(s[:, None])
        folded = logits(model, inputs)
    finally:
        with torch.no_grad():
            for k, w in saved.items():
                model.mlp_linear(by_key[k]).weight.copy_(w)
    torch.testing.assert_close(folded, hooked, rtol=0, atol=1e-5)


def test_mismatched_scales_are_refused(model) -> None:
    with pytest.raises(UserError, match="does not have"):
        with suppress(model, {"layers.9.mlp.up_proj": torch.ones(48)}):
            pass
    with pytest.raises(UserError, match="needs"):
        with suppress(model, {"layers.0.mlp.up_proj": torch.ones(5)}):
            pass
    assert hook_count(model) == 0


def test_suppressed_generator(model, inputs, random_experts) -> None:
    ex = random_experts(model, factor_spec("aura"))
    gen = Suppressed(model, ex)
    assert isinstance(gen, Generator)
    texts = ["The cat sat on the mat.", "A red circle and two blue squares."]
    with suppress(model, ex):
        expected = model.nll(texts)
        answer = model.generate([GenerationRequest("What is in the image?")], GenerationConfig(max_new_tokens=5))
    assert gen.nll(texts) == expected != model.nll(texts)
    assert gen.generate([GenerationRequest("What is in the image?")], GenerationConfig(max_new_tokens=5)) == answer
    assert hook_count(model) == 0
    info = gen.describe()["intervention"]
    assert info["method"]["method"] == "aura" and info["units_suppressed"] == sum(
        int((a < 1).sum()) for a in ex.alpha.values())
    other = Suppressed(model, random_experts(model, factor_spec("det0", top_k=3))).describe()["intervention"]
    assert other["scales_sha256"] != info["scales_sha256"]
