"""The torch-free generation loop and `BundleGenerator`, the runtime.protocol.Generator over a compiled bundle.

Same protocol and same decisions as the PyTorch reference (calib.models.base.MultimodalModel): prompts are
rendered and tokenized, each image placeholder becomes `num_image_tokens` image ids whose embeddings come
from the vision graph; a batch is left-padded with position ids cumsum(mask) - 1 clipped at 0; prefill
runs with an empty past, then one token per step through the KV cache; every request draws from its own
random stream `request_rng(seed, first_index + i)`; a finished request is fed the pad token until the batch
ends; responses are decoded skipping special tokens. So a bundle answers with the tokens its PyTorch
source gives for the same requests.

    from runtime.generate import BundleGenerator
    gen = BundleGenerator.open("build/bundle", providers=("cpu",))
    [r] = gen.generate([GenerationRequest("What is in the image?", image)], GenerationConfig())
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from runtime.backends import Backend, open_backend
from runtime.bundle import Bundle, load_bundle
from runtime.errors import UserError
from runtime.preprocess import preprocess
from runtime.protocol import GenerationConfig, GenerationRequest, GenerationResult, check_prompts
from runtime.sampling import token_loop
from runtime.tokenizer import BundleTokenizer


@dataclass(frozen=True)
class Timings:
    """Where the time of one batch went: prefill (to the first logits) and the decode steps after it."""

    prefill_s: float
    decode_s: float
    decode_steps: int
    batch: int

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode steps per second for one sequence (per-sequence rate, whatever the batch size)."""
        return self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")


def left_pad(prompts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeds [b, s, hidden], attention mask [b, s] int64, position ids [b, s] int64) of left-padded prompts."""
    b, s = len(prompts), max(p.shape[0] for p in prompts)
    embeds = np.zeros((b, s, prompts[0].shape[-1]), dtype=prompts[0].dtype)
    mask = np.zeros((b, s), dtype=np.int64)
    for i, p in enumerate(prompts):
        embeds[i, s - p.shape[0]:] = p
        mask[i, s - p.shape[0]:] = 1
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    return embeds, mask, positions


def decode_loop(backend: Backend, prompts: Sequence[np.ndarray], config: GenerationConfig,
                eos_token_ids: Sequence[int], pad_token_id: int,
                first_index: int = 0) -> tuple[list[tuple[list[int], str]], Timings]:
    """Generate for a batch of prompt embeddings ([s_i, hidden] each).

    Returns (token ids, finish reason) per prompt, and the batch's timings.
    """
    if not prompts:
        return [], Timings(0.0, 0.0, 0, 0)
    if not getattr(backend, "left_padding", True) and len({p.shape[0] for p in prompts}) > 1:
        # the backend cannot take a left-padded batch: one run per prompt (same tokens: each request has its
        # own random stream), timings summed
        outs, parts = [], []
        for i, p in enumerate(prompts):
            out, t = decode_loop(backend, [p], config, eos_token_ids, pad_token_id, first_index + i)
            outs.extend(out)
            parts.append(t)
        return outs, Timings(sum(t.prefill_s for t in parts), sum(t.decode_s for t in parts),
                             sum(t.decode_steps for t in parts), len(prompts))
    b = len(prompts)
    embeds, prompt_mask, positions = left_pad(prompts)
    s = prompt_mask.shape[1]
    mask = np.ones((b, s + max(config.max_new_tokens, 1)), dtype=np.int64)
    mask[:, :s] = prompt_mask
    t0 = time.perf_counter()
    logits, cache = backend.decode(embeds, prompt_mask, positions,
                                   backend.empty_cache(b, capacity=s + max(config.max_new_tokens, 1)))
    t1 = time.perf_counter()
    position = positions[:, -1:]
    stepper = backend.token_stepper(cache, mask)

    def step(chosen: list[int]) -> np.ndarray:
        nonlocal position, cache
        if stepper is not None:
            return stepper(chosen)
        position = position + 1
        ids = np.asarray(chosen, dtype=np.int64)[:, None]
        out, cache = backend.decode(backend.embed(ids), mask[:, :cache.length + 1], position, cache)
        return out

    out, steps = token_loop(logits, step, config, eos_token_ids, pad_token_id, first_index)
    timings = Timings(prefill_s=t1 - t0, decode_s=time.perf_counter() - t1, decode_steps=steps, batch=b)
    return out, timings


class BundleGenerator:
    """A compiled bundle answering generation requests (the runtime.protocol.Generator interface)."""

    def __init__(self, bundle: Bundle, backend: Backend, tokenizer: BundleTokenizer | None = None):
        self.bundle = bundle
        self.spec = bundle.spec
        self.backend = backend
        self.tokenizer = tokenizer or BundleTokenizer.from_file(bundle.tokenizer_path, bundle.spec)
        self.last_timings: list[Timings] = []

    @classmethod
    def open(cls, directory: str | os.PathLike, backend: str = "onnxruntime", verify: bool = True,
             **options: Any) -> "BundleGenerator":
        """Load and verify a bundle and start `backend` on it (options: e.g. providers=("cuda",), threads=2)."""
        bundle = load_bundle(directory, verify=verify)
        return cls(bundle, open_backend(bundle, backend, **options))

    def prompt_embeds(self, ids: Sequence[int], images: Sequence[Any] = ()) -> np.ndarray:
        """Embeddings [s, hidden] of one prompt, its images' embeddings spliced in at the image ids."""
        spec = self.spec
        ids_arr = np.asarray(ids, dtype=np.int64)
        is_image = ids_arr == spec.image_token_id
        n_slots = int(is_image.sum()) // spec.num_image_tokens
        if n_slots != len(images):
            raise UserError(f"the prompt has {n_slots} image placeholder(s) but {len(images)} image(s) were given")
        embeds = self.backend.embed(np.where(is_image, 0, ids_arr)[None])[0]
        if images:
            feats = self.backend.vision(preprocess(images, spec.image))
            if feats.shape[1:] != (spec.num_image_tokens, embeds.shape[-1]):
                raise UserError(f"the vision graph gives image embeddings of shape {feats.shape[1:]}, but runtime.json "
                                f"expects ({spec.num_image_tokens}, {embeds.shape[-1]}); rebuild the bundle")
            embeds = embeds.copy()
            embeds[is_image] = feats.reshape(-1, feats.shape[-1]).astype(embeds.dtype, copy=False)
        return embeds

    def request_embeds(self, request: GenerationRequest) -> np.ndarray:
        """Prompt embeddings of one request (chat template, tokens, image)."""
        return self.prompt_embeds(self.tokenizer.request_ids(request),
                                  [request.image] if request.image is not None else [])

    def generate_embeds(self, prompts: Sequence[np.ndarray], config: GenerationConfig,
                        first_index: int = 0) -> list[GenerationResult]:
        """Generate for one batch of prompt embeddings (their timings go to `last_timings`)."""
        out, timings = decode_loop(self.backend, prompts, config, self.spec.eos_token_ids, self.spec.pad_token_id,
                                   first_index)
        self.last_timings.append(timings)
        return [GenerationResult(self.tokenizer.decode(t), tuple(t), r) for t, r in out]

    def generate(self, requests: Sequence[GenerationRequest], config: GenerationConfig,
                 batch_size: int = 8, first_index: int = 0) -> list[GenerationResult]:
        """Answer each request in order, `batch_size` at a time (the Generator interface)."""
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        ids = [self.tokenizer.request_ids(r) for r in requests]
        check_prompts([len(i) for i in ids], config.max_new_tokens, self.spec.context_length)
        self.last_timings = []
        results: list[GenerationResult] = []
        for start in range(0, len(requests), batch_size):
            prompts = [self.prompt_embeds(i, [r.image] if r.image is not None else [])
                       for i, r in zip(ids[start:start + batch_size], requests[start:start + batch_size])]
            results.extend(self.generate_embeds(prompts, config, first_index + start))
        return results

    def nll(self, texts: Sequence[str], max_length: int = 512) -> list[tuple[float, int]]:
        """Teacher-forced negative log-likelihood of plain texts: (sum over predicted tokens, count)."""
        out = []
        for text in texts:
            ids = self.tokenizer.encode(text)[:max_length]
            if len(ids) < 2:
                out.append((0.0, 0))
                continue
            x = np.asarray(ids, dtype=np.int64)[None]
            logits, _ = self.backend.decode(self.backend.embed(x), np.ones_like(x), np.arange(len(ids))[None],
                                            self.backend.empty_cache(1), last_only=False)
            z = logits[0, :-1].astype(np.float64)
            zmax = z.max(axis=-1, keepdims=True)
            logz = (zmax + np.log(np.exp(z - zmax).sum(axis=-1, keepdims=True)))[:, 0]
            out.append((float((logz - z[np.arange(len(ids) - 1), x[0, 1:]]).sum()), len(ids) - 1))
        return out

    def describe(self) -> dict[str, Any]:
        """Provenance for reports: the bundle's model, content hash, I/O dtype and weight precision (with the
        quantization method, e.g. "int4 (gguf-exact)"), and the backend's providers."""
        backend = {k: v for k, v in self.backend.describe().items() if k in ("backend", "providers", "device")}
        out = {**backend, "model": self.spec.model, "dtype": self.spec.dtype, "bundle_sha256": self.bundle.fingerprint}
        quant = self.bundle.quantization
        if quant.get("name"):
            out["precision"] = quant["name"] + (f" ({quant['method']})" if quant.get("method") else "")
        if self.spec.prompt.system_prompt:
            out["system_prompt"] = self.spec.prompt.system_prompt
        source = self.bundle.manifest.get("model")
        if isinstance(source, dict):  # the exporter's record of the PyTorch model: fingerprints, fold, experts
            out["source"] = {k: source[k] for k in ("name", "config_sha256", "mlp_weights_sha256", "folded",
                                                     "experts") if k in source}
        return out


def load_generator(directory: str | os.PathLike, **options: Any) -> BundleGenerator:
    """`BundleGenerator.open` under the name the model zoo uses (calib.models.load_generator)."""
    return BundleGenerator.open(directory, **options)
