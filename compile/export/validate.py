"""Check exported graphs against the PyTorch model on real inputs, with ONNX Runtime on CPU.

The inputs are the ones generation feeds: preprocessed images for `vision`; the token ids of chat prompts
for `embed`; for `decoder`, a left-padded batch of image + text prompt embeddings as the prefill (past
length 0), then one decode step on the prefill's own present key values (past length > 0), as the runtime
chains them. A language model with sliding-window layers is checked a second time on a batch whose longest
prompt runs past the window (a short prompt left-padded beside it): PyTorch keeps only the window in those
layers' cache, the graph keeps every position and masks the rest, and both must give the same logits.
Each check is a runtime.compare.Comparison (ONNX vs PyTorch) and fails above its tolerance.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from calib.models.base import MultimodalModel
from compile.export.parts import DECODER, EMBED, VISION, head_dim, text_config
from runtime.compare import Comparison, combine, compare_arrays, format_comparison
from runtime.errors import UserError

# fp32 ONNX Runtime (fused kernels) vs PyTorch. Measured on smol-llava: vision 4.4e-6, embed 0, decoder logits
# 5.2e-4 (|logits| ~ 20); on gemma-llava: vision 1.5e-4, embed 0, logits 2.7e-4 (|logits| ~ 40; prompts of 71 and
# of 578 positions, past its window of 512), present key/values 6.7e-4. A wrong mask, position or weight moves
# logits by 1e-2 and more (ignoring gemma-llava's sliding window: by up to 38 on that prompt). Present key/values
# have their own tolerance: they reach |90| in gemma-llava, where 6.7e-4 is 7e-6 of their size (fp32 rounding).
PRESENT = "present"
TOLERANCES = {VISION: 1e-3, EMBED: 0.0, DECODER: 2e-3, PRESENT: 5e-3}
LONG_PAST_WINDOW = 64  # the long check's prompt runs this many tokens past the sliding window
CHECK_QUESTIONS = ("What is in the image?", "How many shapes are there, and what colours are they?")


def session(path: str | os.PathLike, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session with the default (full) graph optimisations, as the runtime uses them."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def check_images(n: int = 2) -> list[Any]:
    """Deterministic synthetic scenes (runtime.scenes): real pixels, no data files needed."""
    from runtime.scenes import scene

    return [scene(i).image for i in range(n)]


def check_prompts(model: MultimodalModel, images: Sequence[Any]) -> list[tuple[list[int], list[Any]]]:
    """(token ids, images) of an image + text prompt per image and one text-only prompt."""
    out = [(model.tokenize(model.chat_prompt(CHECK_QUESTIONS[i % len(CHECK_QUESTIONS)], True)), [im])
           for i, im in enumerate(images)]
    out.append((model.tokenize(model.chat_prompt("Say something kind about cats.", False)), []))
    return out


def left_pad(seqs: Sequence[np.ndarray], pad: float | int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stack sequences [s_i, ...] left-padded to the longest: (batch, attention mask int64)."""
    s = max(len(x) for x in seqs)
    batch = np.full((len(seqs), s) + seqs[0].shape[1:], pad, dtype=seqs[0].dtype)
    mask = np.zeros((len(seqs), s), dtype=np.int64)
    for i, x in enumerate(seqs):
        batch[i, s - len(x):] = x
        mask[i, s - len(x):] = 1
    return batch, mask


def position_ids(mask: np.ndarray) -> np.ndarray:
    """cumsum(mask) - 1 clipped at 0, exactly as calib.models.base does for left padding."""
    return np.clip(np.cumsum(mask, axis=-1) - 1, 0, None).astype(np.int64)


def _compare(graph: str, what: str, got: np.ndarray, ref: np.ndarray, tol: float,
             where: np.ndarray | None = None) -> Comparison:
    """The graph's output against PyTorch's (runtime.compare), refusing a shape mismatch with the fix."""
    if got.shape != ref.shape:
        raise UserError(f"ONNX output shape {got.shape} differs from PyTorch's {ref.shape}; re-export the model")
    return compare_arrays(graph, what, got, ref, where, tol)


@torch.no_grad()
def check_vision(model: MultimodalModel, path: Path, images: Sequence[Any], tol: float) -> Comparison:
    pixels = model.pixel_values(images)
    ref = model.encode_images(pixels).float().numpy()
    (got,) = session(path).run(["image_embeds"], {"pixel_values": pixels.numpy()})
    return _compare(VISION, f"{len(images)} images", got, ref, tol)


@torch.no_grad()
def check_embed(model: MultimodalModel, path: Path, prompts: Sequence[tuple[list[int], list[Any]]],
                tol: float) -> Comparison:
    seqs = [np.where(np.asarray(ids) == model.image_token_id, 0, np.asarray(ids)).astype(np.int64)
            for ids, _ in prompts]
    ids, _ = left_pad(seqs, model.pad_token_id)
    ref = model.embed_tokens(torch.from_numpy(ids)).float().numpy()
    (got,) = session(path).run(["inputs_embeds"], {"input_ids": ids})
    return _compare(EMBED, f"{len(seqs)} prompts, {ids.shape[1]} tokens", got, ref, tol)


def sliding_window(cfg: Any) -> int | None:
    """The attention window of a language model with sliding-window layers (None when every layer sees all)."""
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if not isinstance(window, int) or (types is not None and "sliding_attention" not in types):
        return None
    return window


def long_prompts(model: MultimodalModel, images: Sequence[Any], length: int) -> list[tuple[list[int], list[Any]]]:
    """An image prompt of at least `length` tokens (scene captions as its question) and a short text prompt."""
    from runtime.scenes import scene

    captions: list[str] = []
    ids = model.tokenize(model.chat_prompt(CHECK_QUESTIONS[0], True))
    while len(ids) < length:
        captions.append(scene(len(captions)).caption)
        ids = model.tokenize(model.chat_prompt(" ".join(captions) + " " + CHECK_QUESTIONS[0], True))
    return [(ids, [images[0]]), (model.tokenize(model.chat_prompt("Say something kind about cats.", False)), [])]


def _present(got: dict[str, np.ndarray], past: Any, real: np.ndarray, what: str, tol: float) -> Comparison:
    """Every layer's present key/values at real positions. A sliding-window layer's PyTorch cache holds only the
    last positions; they are compared with the graph's last positions."""
    parts = []
    for i, layer in enumerate(past.layers):
        for name, ref in (("key", layer.keys.numpy()), ("value", layer.values.numpy())):
            mine = got[f"present.{i}.{name}"]
            n = ref.shape[2]
            if mine.shape[2] < n or mine.shape[:2] + mine.shape[3:] != ref.shape[:2] + ref.shape[3:]:
                raise UserError(f"ONNX present.{i}.{name} has shape {mine.shape}, PyTorch's cache {ref.shape}; "
                                "re-export the model")
            where = np.broadcast_to(real[:, None, mine.shape[2] - n:], ref.shape[:3])
            parts.append(_compare(DECODER, what, mine[:, :, mine.shape[2] - n:], ref, tol, where))
    return combine(DECODER, what, parts, tol)


@torch.no_grad()
def check_decoder(model: MultimodalModel, path: Path, prompts: Sequence[tuple[list[int], list[Any]]],
                  tol: float, label: str = "", kv_tol: float | None = None) -> list[Comparison]:
    """Prefill (past length 0) and one decode step on the prefill's present key/values; logits at real
    positions (within `tol`) and every present key/value (within `kv_tol`, default `tol`). `label` prefixes each
    check's description."""
    cfg = text_config(model)
    embeds = [model.inputs_embeds(ids, images).float().numpy() for ids, images in prompts]
    x, mask = left_pad(embeds)
    pos = position_ids(mask)
    b = x.shape[0]
    sess = session(path)
    empty = np.zeros((b, cfg.num_key_value_heads, 0, head_dim(cfg)), dtype=np.float32)
    feed = {"inputs_embeds": x, "attention_mask": mask, "position_ids": pos}
    for i in range(cfg.num_hidden_layers):
        feed[f"past_key_values.{i}.key"] = feed[f"past_key_values.{i}.value"] = empty
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(names, feed)))
    logits, past = model.decode(torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(pos), None)
    real = mask.astype(bool)
    checks = [_compare(DECODER, f"{label}prefill logits ({b} prompts, {x.shape[1]} positions, past 0)",
                       got.pop("logits"), logits.numpy(), tol, real),
              _present(got, past, real, f"{label}prefill present key/values", tol if kv_tol is None else kv_tol)]

    nxt = logits[:, -1].argmax(-1)[:, None]
    del logits  # all-position logits of a long batch: gigabytes at a large vocabulary
    step_x = model.embed_tokens(nxt).float().numpy()
    step_mask = np.concatenate([mask, np.ones((b, 1), dtype=np.int64)], axis=1)
    step_pos = pos[:, -1:] + 1
    feed = {"inputs_embeds": step_x, "attention_mask": step_mask, "position_ids": step_pos}
    for i in range(cfg.num_hidden_layers):
        for name in ("key", "value"):
            feed[f"past_key_values.{i}.{name}"] = got[f"present.{i}.{name}"]
    step_got = sess.run(["logits"], feed)[0]
    step_logits, _ = model.decode(torch.from_numpy(step_x), torch.from_numpy(step_mask),
                                  torch.from_numpy(step_pos), past)
    checks.append(_compare(DECODER, f"{label}decode step logits (past {x.shape[1]})", step_got, step_logits.numpy(),
                           tol))
    return checks


def validate_graphs(model: MultimodalModel, directory: str | os.PathLike,
                    tolerances: dict[str, float] | None = None) -> list[Comparison]:
    """Compare vision.onnx, embed.onnx and decoder.onnx in `directory` with `model`; raise on a failed check."""
    tol = {**TOLERANCES, **(tolerances or {})}
    directory = Path(directory)
    images = check_images()
    prompts = check_prompts(model, images)
    checks = [check_vision(model, directory / f"{VISION}.onnx", images, tol[VISION]),
              check_embed(model, directory / f"{EMBED}.onnx", prompts, tol[EMBED]),
              *check_decoder(model, directory / f"{DECODER}.onnx", prompts, tol[DECODER], kv_tol=tol[PRESENT])]
    window = sliding_window(text_config(model))
    if window is not None and window + LONG_PAST_WINDOW <= (model.context_length() or window + LONG_PAST_WINDOW):
        long = long_prompts(model, images, window + LONG_PAST_WINDOW)
        checks += check_decoder(model, directory / f"{DECODER}.onnx", long, tol[DECODER],
                                f"past the sliding window ({window}): ", tol[PRESENT])
    failed = [c for c in checks if not c.ok]
    if failed:
        raise UserError("the exported graphs do not match PyTorch: " + "; ".join(format_comparison(c) for c in failed)
                        + ". Nothing was written; report this with the model and the package versions")
    return checks
