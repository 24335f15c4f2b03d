"""Layers shared by several backbone families (no family imports another)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def drop_path_rates(end: float, count: int) -> list[float]:
    """Stochastic-depth rates 0 .. end over ``count`` blocks (plain Python: works on meta)."""
    return [end * i / (count - 1) if count > 1 else 0.0 for i in range(count)]


def imagenet_eval_config(num_classes: int, img_size: int = 224) -> dict:
    """The DeiT evaluation protocol VMamba, MedMamba and Vim use, in timm's data-config
    vocabulary (what ``timm.data.resolve_data_config`` reads): short side img/0.875 bicubic,
    center crop img, ImageNet mean/std."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return {"input_size": (3, img_size, img_size), "interpolation": "bicubic", "crop_pct": 0.875,
            "crop_mode": "center", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            "num_classes": num_classes}


def conv_to_channel_last(conv: nn.Module, images: Tensor) -> Tensor:
    """``conv`` on NCHW ``images``, returned as a channel-last map [B, H, W, C]. On CPU the images
    go in channels-last, so the convolution writes the map's rows contiguously and the LayerNorm
    that follows reads them as they lie (VMamba-T's stem at batch 8: conv + LN 25 -> 6.5 ms; an
    NCHW output made the LN copy it first)."""
    if images.device.type == "cpu":
        images = images.contiguous(memory_format=torch.channels_last)
    return conv(images).permute(0, 2, 3, 1)
