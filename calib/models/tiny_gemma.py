"""tiny-random-gemma-llava: a gemma-llava-shaped family model with tiny seeded-random weights, for fast tests.

The same SmolLlava directory format and code path as gemma-llava: a real `Gemma3ForCausalLM` (gemma3_text: one KV
head, head_dim independent of hidden / heads, sliding-window and full-attention layers, the embedding scaled by
sqrt(hidden) inside `Gemma3TextScaledWordEmbedding`, tied lm_head), an EfficientNet-Lite0 tower (random weights:
nothing is downloaded) and the two-layer projector, with gemma-llava's prompt format, BOS and stop ids. The
tokenizer is a tiny BPE shaped like Gemma's (spaces as "▁" starting each piece, BOS added by the post-processor,
newline and double newline as added tokens, ids pad 0, eos 1, bos 2, unk 3), trained in-process. The sliding
window is SLIDING_WINDOW tokens, so short text prompts fit inside it and image or long prompts run past it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from calib.models.base import IMAGE_PLACEHOLDER

SEED = 0
CACHE_KEY = "tiny-random-gemma-llava-v1"
SLIDING_WINDOW = 16
_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, as in Gemma
_CORPUS = [
    "The capital of France is Paris. The cat sat on the mat.",
    "USER: What is in the image?\nASSISTANT: A red circle and two blue squares.",
    "Describe the picture in one sentence.\n\nIt shows a dog running in a park.",
    "How many shapes are there? There are three shapes: a triangle, a star and a circle.",
    "Say something kind about cats. Cats are calm, curious and good company.",
]


def _tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # word-sized pieces
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(_SPECIALS), show_progress=False)
    tok.train_from_iterator([line.replace("\n", " ") for line in _CORPUS] * 4, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in ("\n", "\n\n")])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)


def text_config(vocab_size: int) -> dict:
    """A tiny gemma3_text config: 4 layers (sliding, sliding, full, sliding), 4 heads / 1 KV head of 32 over a
    hidden size of 64 (so head_dim != hidden / heads, as in Gemma 3 270M: 256 vs 640 / 4)."""
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                           sliding_window=SLIDING_WINDOW, max_position_embeddings=4096,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                        "sliding_attention"],
                           pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True)
    return {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}


def build(out: Path) -> dict:
    """Write the tiny model as a family-model directory (calib.models.smol_llava format) into `out`."""
    from calib.models import efficientnet, smol_llava

    tok = _tokenizer()
    text = text_config(len(tok))
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    config = {
        "model_type": "gemma-llava",
        "format_version": smol_llava.FORMAT_VERSION,
        "chat_format": smol_llava.PLAIN_CHAT_FORMAT,
        "add_bos": True,
        "stop_token_ids": [tok.eos_token_id, *tok.convert_tokens_to_ids(["\n", "\n\n"])],
        "text_config": text,
        "vision_config": {"name": "efficientnet-lite0", "feature_dim": efficientnet.FEATURE_DIM,
                          "features": efficientnet.FEATURES_ID, "grid": efficientnet.GRID, "frozen": True,
                          "source": "seeded-random"},
        "projector_config": {"type": "mlp2x_gelu", "hidden_size": text["hidden_size"], "state": "seeded-random",
                             "seed": SEED},
        "image_token": IMAGE_PLACEHOLDER,
        "image_token_index": tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        "num_image_tokens": efficientnet.GRID * efficientnet.GRID,
    }
    torch.manual_seed(SEED)
    module = smol_llava.SmolLlavaModule(config).eval()
    smol_llava.SmolLlava(module, config, tok, efficientnet.IMAGE_SPEC, name="tiny-random-gemma-llava").save(out)
    return {"seed": SEED, "recipe": "calib.models.tiny_gemma"}


def tiny_gemma_llava_dir() -> Path:
    """The tiny gemma-llava directory in the asset cache (built on first use, seconds)."""
    from runtime import assets

    return assets.derived(CACHE_KEY, build, kind="model:gemma-llava")
