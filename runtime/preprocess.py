"""Image preprocessing in numpy + Pillow, shared by the PyTorch models and the compiled runtime.

One implementation for both sides means a compiled bundle sees exactly the pixels its PyTorch source saw.
The spec is the image-processing config stored with each model and bundle (CLIP-style fields).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from runtime.errors import UserError
from runtime.images import usable_image

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class ImageSpec:
    """Resize the shortest edge to `size`, centre-crop `size` x `size`, scale to [0, 1], normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageSpec":
        try:
            return cls(size=int(d["size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                       resample=d.get("resample", "bicubic"))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"image-processing config is incomplete ({e}); it needs size, mean and std") from e

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> "ImageSpec":
        """From a Hugging Face CLIPImageProcessor config (preprocessor_config.json)."""
        size = d.get("crop_size", d.get("size"))
        if isinstance(size, dict):
            size = size.get("height", size.get("shortest_edge"))
        resample = {3: "bicubic", 2: "bilinear", 0: "nearest"}.get(d.get("resample", 3), "bicubic")
        return cls(size=int(size), mean=tuple(d["image_mean"]), std=tuple(d["image_std"]), resample=resample)




def preprocess(images: Sequence[Image.Image], spec: ImageSpec) -> np.ndarray:
    """Pixel values [n, 3, size, size] float32 for a batch of images."""
    out = np.empty((len(images), 3, spec.size, spec.size), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    for i, image in enumerate(images):
        image = usable_image(image, getattr(image, "filename", "") or f"image {i + 1} of the batch")
        w, h = image.size
        if w <= h:  # shortest edge to `size`, the other truncated as Hugging Face's image processors do
            nw, nh = spec.size, int(spec.size * h / w)
        else:
            nw, nh = int(spec.size * w / h), spec.size
        image = image.resize((nw, nh), _RESAMPLE[spec.resample])
        left, top = (nw - spec.size) // 2, (nh - spec.size) // 2
        image = image.crop((left, top, left + spec.size, top + spec.size))
        x = np.asarray(image, dtype=np.float32) / 255.0
        out[i] = ((x - mean) / std).transpose(2, 0, 1)
    return out
