"""The torch-free generation loop on a compiled bundle gives the PyTorch model's tokens for the same requests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import UserError
from runtime.generate import BundleGenerator, decode_loop, left_pad
from runtime.protocol import GenerationConfig, GenerationRequest, Generator
from runtime.tokenizer import clean_up_tokenization

QUESTIONS = ("What is in the image?", "Describe the picture in one sentence.", "How many shapes are there?")


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = ((40, 50), (64, 30), (30, 30))  # landscape, portrait, square: resize + crop paths
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def generator(tiny_bundle: Path) -> BundleGenerator:
    return BundleGenerator.open(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def requests() -> list[GenerationRequest]:
    image_requests = [GenerationRequest(q, im) for q, im in zip(QUESTIONS, _images())]
    return image_requests + [GenerationRequest("The capital of France is", chat=False),
                             GenerationRequest("Answer briefly and politely.")]


def test_is_a_generator(generator: BundleGenerator):
    assert isinstance(generator, Generator)
    d = generator.describe()
    assert d["backend"] == "onnxruntime" and d["providers"] == ["CPUExecutionProvider"]
    assert d["model"] == "tiny-random-llava" and d["dtype"] == "float32" and len(d["bundle_sha256"]) == 64
    assert "precision" not in d  # an exported (unquantized) bundle: its weights are its I/O dtype


def test_prompt_tokens_match_the_pytorch_model(generator: BundleGenerator, tiny_llava, requests):
    for r in requests:
        assert generator.tokenizer.request_ids(r) == tiny_llava.request_ids(r)


def test_prompt_embeddings_match_the_pytorch_model(generator: BundleGenerator, tiny_llava, requests):
    for r in requests[:3]:
        ids = tiny_llava.request_ids(r)
        ours = generator.prompt_embeds(ids, [r.image])
        np.testing.assert_allclose(ours, tiny_llava.inputs_embeds(ids, [r.image]).numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def greedy_reference(tiny_llava, requests) -> list:
    return tiny_llava.generate(requests, GenerationConfig(max_new_tokens=64), batch_size=len(requests))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_greedy_tokens_are_identical_to_pytorch(generator: BundleGenerator, greedy_reference, requests,
                                                batch_size: int):
    """3 image + text prompts x 64 new tokens (plus a raw and a text-only chat prompt), alone and batched."""
    ours = generator.generate(requests, GenerationConfig(max_new_tokens=64), batch_size=batch_size)
    assert [len(r.token_ids) for r in ours[:3]] == [64, 64, 64]
    assert ours == greedy_reference


def test_a_prefill_past_the_logits_budget_runs_in_chunks(tiny_bundle: Path, greedy_reference, requests):
    """A batch whose all-position prefill logits pass max_logits_bytes runs in chunks of 7 positions chained
    through the cache (image prompts are ~40 tokens): the same tokens as one prefill and as PyTorch."""
    vocab = json.loads((tiny_bundle / "runtime.json").read_text())["vocab_size"]
    gen = BundleGenerator.open(tiny_bundle, threads=1, max_logits_bytes=7 * 5 * vocab * 4)
    assert gen.backend.prefill_chunk(5) == 7 and gen.backend.prefill_chunk(1) == 35
    assert gen.generate(requests, GenerationConfig(max_new_tokens=64), batch_size=5) == greedy_reference
    with pytest.raises(UserError, match="max_logits_bytes must be >= 1"):
        BundleGenerator.open(tiny_bundle, threads=1, max_logits_bytes=0).generate(requests[:1], GenerationConfig())


def test_seeded_sampling_is_identical_to_pytorch_and_independent_of_batching(generator: BundleGenerator, tiny_llava,
                                                                            requests):
    config = GenerationConfig(max_new_tokens=64, do_sample=True, top_p=0.9, seed=3)
    alone = generator.generate(requests, config, batch_size=1)
    batched = generator.generate(requests, config, batch_size=len(requests))
    assert alone == batched == tiny_llava.generate(requests, config, batch_size=len(requests))
    assert alone != generator.generate(requests, GenerationConfig(max_new_tokens=64, do_sample=True, top_p=0.9, seed=4))
    assert "eos" in {r.finish_reason for r in alone}  # this seed stops one response early: the eos path is covered


def test_nll_matches_pytorch(generator: BundleGenerator, tiny_llava):
    texts = ["The cat sat on the mat.", "Paris is the capital of France and a nice city.", "a"]
    ours, reference = generator.nll(texts), tiny_llava.nll(texts)
    assert [n for _, n in ours] == [n for _, n in reference]
    np.testing.assert_allclose([s for s, _ in ours], [s for s, _ in reference], rtol=1e-5)


def test_image_count_must_match_the_placeholders(generator: BundleGenerator, tiny_llava):
    ids = generator.tokenizer.request_ids(GenerationRequest("Hi?", _images()[0]))
    with pytest.raises(UserError, match="1 image placeholder\\(s\\) but 0 image\\(s\\)"):
        generator.prompt_embeds(ids, [])


def test_timings_are_recorded(generator: BundleGenerator, requests):
    generator.generate(requests[:2], GenerationConfig(max_new_tokens=5), batch_size=1)
    assert [(t.batch, t.decode_steps) for t in generator.last_timings] == [(1, 4), (1, 4)]
    assert all(t.prefill_s > 0 and t.decode_tokens_per_s > 0 for t in generator.last_timings)


def test_left_pad():
    a, b = np.ones((2, 3), np.float32), 2 * np.ones((4, 3), np.float32)
    embeds, mask, positions = left_pad([a, b])
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert positions.tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    assert embeds[0, :2].sum() == 0 and (embeds[0, 2:] == 1).all() and (embeds[1] == 2).all()


def test_decode_loop_edges(generator: BundleGenerator, requests):
    prompt = generator.request_embeds(requests[0])
    [(tokens, reason)], timings = decode_loop(generator.backend, [prompt], GenerationConfig(max_new_tokens=1),
                                              generator.spec.eos_token_ids, generator.spec.pad_token_id)
    assert len(tokens) == 1 and reason == "length" and timings.decode_steps == 0
    assert decode_loop(generator.backend, [], GenerationConfig(), (2,), 3)[0] == []


def test_clean_up_tokenization_is_transformers():
    from transformers import PreTrainedTokenizerBase

    text = "Hello , world ! Isn 't it ? I 'm sure it 's fine . They 're here , we 've ' quoted ' ."
    assert clean_up_tokenization(text) == PreTrainedTokenizerBase.clean_up_tokenization(text)
