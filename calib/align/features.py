"""Vision features computed once: the tower is frozen, so each image's [49, FEATURE_DIM] map never changes.

Features are kept as fp16 (about 125 KB an image) and, with a cache directory, stored as safetensors under
a key made of the tower's weights file hash and every image's pixels, so a later run with the same images
reads them back instead of running EfficientNet again.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from calib.models import efficientnet
from runtime.preprocess import preprocess


def fingerprint(images: Sequence[Image.Image], tower_id: str) -> str:
    """sha256 over the tower's identity and every image's size, mode and pixels, in order."""
    h = hashlib.sha256(tower_id.encode())
    for image in images:
        h.update(f"{image.size}{image.mode}".encode())
        h.update(np.asarray(image).tobytes())
    return h.hexdigest()


@torch.inference_mode()
def encode(tower: torch.nn.Module, images: Sequence[Image.Image], batch_size: int = 32,
           progress: bool = True) -> torch.Tensor:
    """Frozen-tower features [n, 49, FEATURE_DIM] in fp16 for `images` (preprocessed as the model does)."""
    tower.eval()
    out = torch.empty((len(images), efficientnet.GRID * efficientnet.GRID, efficientnet.FEATURE_DIM),
                      dtype=torch.float16)
    for start in tqdm(range(0, len(images), batch_size), desc="vision features", unit="batch", disable=not progress):
        chunk = images[start:start + batch_size]
        pixels = torch.from_numpy(preprocess(chunk, efficientnet.IMAGE_SPEC))
        out[start:start + len(chunk)] = efficientnet.features(tower, pixels).to(torch.float16)
    return out


def cached_encode(tower: torch.nn.Module, images: Sequence[Image.Image], tower_id: str,
                  cache_dir: Path | None, batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """`encode`, read from / written to `cache_dir` (if given) under the images' fingerprint."""
    if cache_dir is None:
        return encode(tower, images, batch_size, progress)
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir) / f"features-{fingerprint(images, tower_id)[:32]}.safetensors"
    if path.is_file():
        return load_file(str(path))["features"]
    feats = encode(tower, images, batch_size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"features": feats.contiguous()}, str(tmp))
    tmp.replace(path)
    return feats
