"""tiny-random-llava: a real `LlavaForConditionalGeneration` (CLIP vision + Llama text) with seeded random
weights and a tiny byte-level BPE tokenizer trained in-process, for fast tests of every llava code path."""
from __future__ import annotations

from pathlib import Path

import torch

from calib.models.base import IMAGE_PLACEHOLDER

SEED = 0
CACHE_KEY = "tiny-random-llava-v2"  # v2: a 4096-position context
_CORPUS = [
    "The capital of France is Paris. The cat sat on the mat.",
    "USER: What is in the image? ASSISTANT: A red circle and two blue squares.",
    "Describe the picture in one sentence. It shows a dog running in a park.",
    "How many shapes are there? There are three shapes: a triangle, a star and a circle.",
    "You are a helpful assistant. Answer briefly and politely.",
]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_PLACEHOLDER]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", additional_special_tokens=[IMAGE_PLACEHOLDER])


def build(out: Path) -> dict:
    """Write the tiny model as a llava-hf directory into `out`."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = _tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                              image_size=30, patch_size=6, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,  # as LLaVA-1.5's:
                       # the benchmark's jailbreak prompts (~2000 tokens here) fit, as they do in the real models
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(out)
    return {"seed": SEED, "recipe": "calib.models.tiny"}
