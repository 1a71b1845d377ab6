"""The text side of a bundle: prompt rendering, tokenization with image-token expansion, decoding.

Mirrors what the PyTorch models do through transformers' fast tokenizer (which wraps the same
tokenizers-library JSON): encode with or without special tokens, decode skipping special tokens, apply
transformers' `clean_up_tokenization` when the model's tokenizer does, strip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from runtime.bundle import BundleSpec
from runtime.errors import UserError
from runtime.protocol import GenerationRequest


def clean_up_tokenization(text: str) -> str:
    """transformers' `PreTrainedTokenizerBase.clean_up_tokenization`: no space before punctuation and contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class BundleTokenizer:
    """A `tokenizers.Tokenizer` plus the bundle's prompt format and image-token settings."""

    def __init__(self, tokenizer: object, spec: BundleSpec):
        self.tokenizer = tokenizer
        self.spec = spec
        placeholder_id = tokenizer.token_to_id(spec.prompt.image_placeholder)
        if placeholder_id != spec.image_token_id:
            raise UserError(f"the bundle's tokenizer maps {spec.prompt.image_placeholder!r} to {placeholder_id}, but "
                            f"runtime.json says image_token_id {spec.image_token_id}; rebuild the bundle")

    @classmethod
    def from_file(cls, path: str | Path, spec: BundleSpec) -> "BundleTokenizer":
        """Load tokenizer.json (with truncation and padding off: prompts are padded by the generation loop)."""
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise UserError(f"{path} is not a valid tokenizers JSON file ({e}); rebuild the bundle") from e
        tok.no_truncation()
        tok.no_padding()
        return cls(tok, spec)

    def encode(self, text: str) -> list[int]:
        """Token ids of a text, special tokens added as the model's tokenizer adds them; no image expansion."""
        return self.tokenizer.encode(text, add_special_tokens=self.spec.prompt.add_special_tokens).ids

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of a prompt, each image placeholder expanded to `num_image_tokens` image ids."""
        image, n = self.spec.image_token_id, self.spec.num_image_tokens
        out: list[int] = []
        for t in self.encode(text):
            out.extend([t] * n if t == image else [t])
        return out

    def request_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt ids of one request: its chat template (unless `chat` is false), tokenized and expanded."""
        return self.prompt_ids(self.spec.prompt.render(request.prompt, request.image is not None, request.chat))

    def decode(self, ids: Sequence[int]) -> str:
        """Response text: special tokens skipped, cleaned up like the model's tokenizer, stripped."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        if self.spec.clean_up_tokenization_spaces:
            text = clean_up_tokenization(text)
        return text.strip()
