"""Teacher-forced activation collection: response-only pooling, batching-invariant, streamed to the store."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from calib.activations import collect, layout, length_matched
from calib.calibset import CalibSample
from calib.models import load_model
from runtime.errors import UserError


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random-llava")


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def samples() -> list[CalibSample]:
    return [
        CalibSample("a", "What is in the image?", "A red circle.", True, image=image(0)),
        CalibSample("b", "Describe the picture.", "It shows a dog running in a park, two blue squares.", False,
                    image=image(1)),
        CalibSample("c", "How many shapes are there?", "Three.", True),
        CalibSample("d", "", "The cat sat on the mat.", False, chat=False),
        CalibSample("e", "You are", " a helpful assistant", True, chat=False),
    ]


@torch.no_grad()
def reference_rows(model, sample: CalibSample, pooling: str, whole: bool = False) -> np.ndarray:
    """One sample alone, its module outputs captured by plain hooks and pooled by hand."""
    lay = layout(model, sample)
    prompt = model.inputs_embeds(lay.prompt_ids, [sample.image] if sample.image else [])
    embeds = torch.cat([prompt, model.embed_tokens(torch.tensor([lay.response_ids]))[0]])[None]
    outs = {}
    handles = [model.mlp_linear(u).register_forward_hook(lambda m, i, o, k=u.key: outs.__setitem__(k, o[0]))
               for u in model.mlp_units()]
    try:
        n = embeds.shape[1]
        model.decode(embeds, torch.ones((1, n), dtype=torch.long), torch.arange(n)[None])
    finally:
        for h in handles:
            h.remove()
    r = slice(0 if whole else len(lay.prompt_ids), None)
    pool = (lambda t: t[r].amax(0)) if pooling == "max" else (lambda t: t[r].mean(0))
    return torch.cat([pool(outs[u.key]) for u in model.mlp_units()]).numpy()


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_pooled_rows_match_unbatched_reference(model, tmp_path, pooling: str) -> None:
    data = samples()
    store, summary = collect(model, data, tmp_path / "acts.bin", pooling=pooling, batch_size=3, progress=False)
    assert store.n_samples == 5 and summary["n_skipped_empty_response"] == 0
    assert store.n_units == sum(u.width for u in model.mlp_units())
    rows = store.columns(0, store.n_units)
    refs = {s.id: reference_rows(model, s, pooling) for s in data}
    # rows are stored in length order: match each stored row to its sample by value
    for row, label in zip(rows, store.labels):
        dist = {sid: np.abs(row - ref).max() for sid, ref in refs.items()}
        best = min(dist, key=dist.get)
        assert dist[best] < 1e-4, dist
        assert label == next(s.label for s in data if s.id == best)
        refs.pop(best)
    assert refs == {}


def test_prompt_tokens_are_not_pooled(model, tmp_path) -> None:
    s = samples()[0]
    lay = layout(model, s)
    assert lay.prompt_ids == model.tokenize(model.chat_prompt(s.prompt, True))
    assert lay.response_ids == model.tokenizer(s.response, add_special_tokens=False).input_ids
    with_ids = CalibSample("x", s.prompt, "ignored", True, response_ids=(5, 6, 7))
    assert layout(model, with_ids).response_ids == [5, 6, 7]
    # a generated image-token id in the response is a plain token, not an image slot
    generated = CalibSample("g", s.prompt, "", True, image=s.image, response_ids=(model.image_token_id, 7))
    assert collect(model, [generated, samples()[3]], tmp_path / "g.bin", progress=False)[0].n_samples == 2
    assert layout(model, samples()[1], max_response_tokens=2).response_ids == \
        model.tokenizer(samples()[1].response, add_special_tokens=False).input_ids[:2]
    # pooling the response only is not pooling everything (the rows the store gets are checked above)
    assert np.abs(reference_rows(model, s, "max", whole=True) - reference_rows(model, s, "max")).max() > 1e-3


def test_empty_responses_are_skipped_and_bad_input_refused(model, tmp_path) -> None:
    data = samples() + [CalibSample("z", "Hi", "", False)]
    store, summary = collect(model, data, tmp_path / "a.bin", progress=False)
    assert store.n_samples == 5 and summary["n_skipped_empty_response"] == 1
    assert summary["mean_response_tokens_toxic"] > 0
    scores = store.auroc()
    assert scores.shape == (store.n_units,) and ((scores >= 0) & (scores <= 1)).all()
    with pytest.raises(UserError, match="unknown pooling"):
        collect(model, data, tmp_path / "b.bin", pooling="median", progress=False)
    with pytest.raises(UserError, match="raw text"):
        collect(model, [CalibSample("i", "", "x", True, chat=False, image=image(0))], tmp_path / "c.bin",
                progress=False)
    with pytest.raises(UserError, match="non-empty response"):
        collect(model, [CalibSample("z", "Hi", "", False)], tmp_path / "d.bin", progress=False)
    assert not (tmp_path / "d.bin").exists()


def test_length_matching_balances_every_length() -> None:
    lengths = [3, 3, 3, 5, 5, 7, 7, 7, 7, 9]
    labels = [True, False, False, True, True, True, False, False, False, False]
    kept = length_matched(lengths, labels, seed=0)
    assert kept == length_matched(lengths, labels, seed=0)
    pairs = [(lengths[i], labels[i]) for i in kept]
    for n in {n for n, _ in pairs}:
        assert pairs.count((n, True)) == pairs.count((n, False)) == 1
    assert sorted({n for n, _ in pairs}) == [3, 7] and len(kept) == 4


def test_collect_with_matched_lengths(model, tmp_path) -> None:
    a = CalibSample("a", "Q?", "", True, response_ids=(7, 8, 9))
    b = CalibSample("b", "Q?", "", False, response_ids=(9, 8, 7))
    c = CalibSample("c", "Q?", "", False, response_ids=(9, 8))
    store, summary = collect(model, [a, b, c], tmp_path / "m.bin", match_lengths=True, progress=False)
    assert store.n_samples == 2 and summary["n_dropped_unmatched_length"] == 1
    assert summary["mean_response_tokens_toxic"] == summary["mean_response_tokens_nontoxic"] == 3
