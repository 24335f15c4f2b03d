"""MedMamba as a tokenred backbone, written from the published architecture.

Each SS-Conv-SSM block splits the channels in half: the first half goes through a conv branch
(BN, 3x3 conv, BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv, ReLU), the second through LayerNorm and
VMamba's v0 SS2D (d_state 16, expand 2, z gate); the halves are concatenated, channel-shuffled
with 2 groups (channel 2i from the conv branch, 2i+1 from the SSM branch) and added to the input.
Stem: 4x4 patch conv + LayerNorm; downsample: patch merging (odd sizes cropped, as the original
does); head: global average pool + linear, no final norm. Parameter names are the official ones
(``ln_1``, ``self_attention``, ``conv33conv33conv11``), so official state_dicts load strictly.

Sites: the SS2D of every block is a ``grid`` site (``layers.<stage>.blocks.<j>``), the same as
in VMamba (this file reuses VMamba's SS2D and its site adapter).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from timm.layers import DropPath

from tokenred.layers import conv_to_channel_last, drop_path_rates, imagenet_eval_config
from tokenred.layers.ss2d import SS2D, GridAdapter, PatchMerging2D, _init_weights, pin_scan_backend
from tokenred.checkpoint import CheckpointError
from tokenred.kernels import check_backend
from tokenred.registry import register_backbone
from tokenred.sites import register_site_adapter


class SSConvSSM(nn.Module):
    def __init__(self, dim: int, drop_path: float, d_state: int, scan_backend: Optional[str]):
        super().__init__()
        half = dim // 2
        self.ln_1 = nn.LayerNorm(half)
        self.self_attention = SS2D(half, d_state=d_state, ssm_ratio=2.0, dt_rank="auto",
                                   act="silu", d_conv=3, conv_bias=True, gate=True,
                                   scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.conv33conv33conv11 = nn.Sequential(
            nn.BatchNorm2d(half), nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        left, right = x.chunk(2, dim=-1)
        ssm = self.drop_path(self.self_attention(self.ln_1(right)))
        conv = self.conv33conv33conv11(left.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        mixed = torch.stack([conv, ssm], dim=-1).flatten(-2)   # channel shuffle, 2 groups
        return mixed + x


class MedMamba(nn.Module):
    """MedMamba. Input NCHW images, channel-last inside."""

    def __init__(self, depths: Sequence[int] = (2, 2, 4, 2),
                 dims: Union[int, Sequence[int]] = (96, 192, 384, 768), num_classes: int = 1000,
                 patch_size: int = 4, in_chans: int = 3, d_state: int = 16,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 norm_layer: str = "ln", patch_norm: bool = True, use_checkpoint: bool = False,
                 scan_backend: Optional[str] = None):
        super().__init__()
        if isinstance(dims, int):
            dims = [dims * 2 ** i for i in range(len(depths))]
        dims = [int(d) for d in dims]
        if len(dims) != len(depths):
            raise ValueError(f"MedMamba: {len(depths)} depths but {len(dims)} dims")
        if norm_layer not in ("ln", nn.LayerNorm):
            raise ValueError(f"MedMamba: norm_layer={norm_layer!r} is not supported; only LayerNorm")
        if any(d % 2 for d in dims):
            raise ValueError(f"MedMamba: every stage width must be even (split in halves), got {dims}")
        if scan_backend is not None:
            check_backend(scan_backend)
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.pretrained_cfg = imagenet_eval_config(num_classes)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, dims[0], patch_size, patch_size)
        self.patch_embed.norm = nn.LayerNorm(dims[0]) if patch_norm else nn.Identity()
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        rates = drop_path_rates(drop_path_rate, sum(depths))
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(depths):
            stage = nn.Module()
            stage.blocks = nn.ModuleList([SSConvSSM(dims[i], rates[start + j], d_state, scan_backend)
                                          for j in range(depth)])
            start += depth
            stage.downsample = (PatchMerging2D(dims[i], dims[i + 1], odd="crop")
                                if i + 1 < len(depths) else None)
            self.layers.append(stage)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def set_scan_backend(self, backend: Optional[str]) -> None:
        """Pin the selective-scan backend of every block (None: the process default)."""
        pin_scan_backend(self, backend)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Channel-last output of every stage, each after its downsample."""
        x = conv_to_channel_last(self.patch_embed.proj, x)
        x = self.pos_drop(self.patch_embed.norm(x))
        outs = []
        for stage in self.layers:
            for block in stage.blocks:
                x = block(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
            outs.append(x)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x).permute(0, 3, 1, 2)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


_ARGS = {"depths", "dims", "num_classes", "patch_size", "in_chans", "d_state", "drop_rate",
         "attn_drop_rate", "drop_path_rate", "norm_layer", "patch_norm", "use_checkpoint",
         "scan_backend"}


def from_official_config(cfg: Union[Mapping[str, Any], str, os.PathLike], **overrides: Any) -> MedMamba:
    """Build MedMamba from the official ``VSSM(...)`` constructor kwargs of MedMamba.py (a dict,
    or a yaml/json file holding one). ``overrides`` win."""
    if isinstance(cfg, (str, os.PathLike)):
        import yaml

        with open(cfg) as fh:
            cfg = yaml.safe_load(fh)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"from_official_config needs a dict or a file path, got {type(cfg).__name__}")
    kwargs = {**cfg, **overrides}
    unknown = sorted(set(kwargs) - _ARGS)
    if unknown:
        raise ValueError(f"unknown MedMamba argument(s) {unknown}; known: {sorted(_ARGS)}")
    return MedMamba(**kwargs)


CONFIGS = {
    "medmamba_tiny": dict(depths=[2, 2, 4, 2], dims=[96, 192, 384, 768]),
    "medmamba_small": dict(depths=[2, 2, 8, 2], dims=[96, 192, 384, 768]),
    "medmamba_base": dict(depths=[2, 2, 12, 2], dims=[128, 256, 512, 1024]),
}
_DOCS = {
    "medmamba_tiny": "MedMamba-T (MedMamba.py config; 14.5M params at 6 classes, 3.00 GFLOPs)",
    "medmamba_small": "MedMamba-S (MedMamba.py config; 18.6M params at 6 classes, 3.97 GFLOPs)",
    "medmamba_base": "MedMamba-B (MedMamba.py config; 39.9M params at 6 classes, 8.17 GFLOPs)",
}


def _make_factory(name: str):
    def factory(pretrained: bool = False, num_classes: int = 6, **kwargs: Any) -> MedMamba:
        if pretrained:
            raise CheckpointError(f"{name}: MedMamba's weights are published only on Baidu pan and "
                                  f"cannot be fetched automatically; download them and pass "
                                  f"checkpoint=PATH (CLI: --checkpoint {name}=PATH)")
        return MedMamba(**{**CONFIGS[name], "num_classes": num_classes, **kwargs})

    factory.__name__ = name
    factory.__doc__ = _DOCS[name]
    return factory


for _name in CONFIGS:
    register_backbone(_name, family="medmamba", doc=_DOCS[_name])(_make_factory(_name))

register_site_adapter(MedMamba, GridAdapter)

__all__ = ["MedMamba", "SSConvSSM", "from_official_config", "CONFIGS"]
