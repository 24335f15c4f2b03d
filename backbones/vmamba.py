"""VMamba (both released families) as tokenred backbones, written from the published architecture.

* v2 ("vssm1"; forward type ``v05_noz``): d_state 1, no z gate, conv without bias, MLP ratio 4,
  two-conv patch embed (v2), 3x3 stride-2 conv downsample (v3).
* v0 (vanilla; forward type ``v0``): d_state 16, ssm_ratio 2, z gate, conv bias, no MLP,
  4x4 patch embed (v1), patch-merging downsample (v1; odd sizes padded).

Parameter names and shapes are the official ones, so official checkpoints load strictly (old
v0-era names are remapped by the checkpoint filter below). Everything runs channel-last: the
official "ln2d" layout computes the same function (LayerNorm over channels, 1x1 convs = linears),
and channel-last lets every projection be one GEMM and every LayerNorm a plain ``layer_norm``.

The 2D selective scan (``SS2D``) and the grid-site adapter of every SS2D model are shared layers
(``tokenred/layers/ss2d.py``; MedMamba's blocks use the same v0 SS2D). The MLP is timm's, with
fc1 and its GELU fused in CPU inference (``tokenred/layers/mlp.py``).

Sites: every SS2D is a ``grid`` site named after its block (``layers.<stage>.blocks.<j>``), at
the 2D map entering the cross-scan (after in_proj, depthwise conv and activation).
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from timm.layers import DropPath

from tokenred.checkpoint import CheckpointError, load_checkpoint, register_checkpoint_filter
from tokenred.kernels import check_backend
from tokenred.layers import conv_to_channel_last, drop_path_rates, imagenet_eval_config
from tokenred.layers.mlp import Mlp
from tokenred.layers.ss2d import (ACTIVATIONS, SS2D, GridAdapter, PatchMerging2D, _init_weights,
                                  pin_scan_backend)
from tokenred.registry import register_backbone
from tokenred.sites import register_site_adapter


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
class VSSBlock(nn.Module):
    """x + drop_path(SS2D(norm(x))), then x + drop_path(MLP(norm2(x))) when mlp_ratio > 0."""

    def __init__(self, dim: int, drop_path: float, ssm: dict, mlp_ratio: float, mlp_act: str,
                 mlp_drop: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, **ssm)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=ACTIVATIONS[mlp_act], drop=mlp_drop)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class _Placeholder(nn.Module):
    """Keeps the official Sequential's indices: it has parameter-free Permute/Identity modules
    here (our forward does the layout changes itself)."""

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - never called
        return x


def _conv_nhwc(conv: nn.Conv2d, x: Tensor) -> Tensor:
    x = x.permute(0, 3, 1, 2)
    if x.device.type == "cpu" and conv.weight.numel() > x.numel():
        # a channels-last input makes the CPU convolution copy its weight to channels-last on
        # every call; where the weight is the larger tensor (late downsamples at small batches)
        # copying the map is cheaper (stage-3 downsample, batch 1: 4.5 -> 3.1 ms)
        x = x.contiguous()
    return conv(x).permute(0, 2, 3, 1)


class ConvDownsample(nn.Sequential):
    """Downsample v3: 3x3 stride-2 conv + LayerNorm (official indices 1 and 3)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__(_Placeholder(), nn.Conv2d(dim, out_dim, 3, 2, 1), _Placeholder(),
                         nn.LayerNorm(out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self[3](_conv_nhwc(self[1], x))


class PatchEmbed(nn.Sequential):
    """v1: conv patch x patch, stride patch [0] + LN [2]. v2: conv 3x3 s2 [0] + LN [2] + GELU [4]
    + conv 3x3 s2 [5] + LN [7]. Takes NCHW images, returns a channel-last map."""

    def __init__(self, version: str, in_chans: int, dim: int, patch_size: int, norm: bool):
        def ln(c: int) -> nn.Module:
            return nn.LayerNorm(c) if norm else nn.Identity()

        if version == "v1":
            super().__init__(nn.Conv2d(in_chans, dim, patch_size, patch_size), _Placeholder(), ln(dim))
        elif version == "v2":
            stride = patch_size // 2
            kernel, pad = stride + 1, 1
            super().__init__(nn.Conv2d(in_chans, dim // 2, kernel, stride, pad), _Placeholder(),
                             ln(dim // 2), _Placeholder(), nn.GELU(),
                             nn.Conv2d(dim // 2, dim, kernel, stride, pad), _Placeholder(), ln(dim))
        else:
            raise ValueError(f"patch embed version {version!r} is not supported; choose v1 or v2")
        self.version = version

    def forward(self, x: Tensor) -> Tensor:
        if self.version == "v1":
            return self[2](conv_to_channel_last(self[0], x))
        x = self[2](conv_to_channel_last(self[0], x))
        x = _conv_nhwc(self[5], self[4](x))
        return self[7](x)


class Classifier(nn.Module):
    """LayerNorm -> global average pool -> linear (official ``classifier.norm`` / ``.head``)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x).permute(0, 3, 1, 2)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
FORWARD_TYPES = {"v05_noz": False, "v3_noz": False, "v05": True, "v0": True}  # -> z gate


@dataclass
class VMambaConfig:
    """The architecture, in the official VSSM constructor's vocabulary."""

    depths: Sequence[int] = (2, 2, 9, 2)
    dims: Union[int, Sequence[int]] = 96
    ssm_d_state: int = 16
    ssm_ratio: float = 2.0
    ssm_dt_rank: Union[int, str] = "auto"
    ssm_act_layer: str = "silu"
    ssm_conv: int = 3
    ssm_conv_bias: bool = True
    ssm_drop_rate: float = 0.0
    ssm_init: str = "v0"
    forward_type: str = "v2"
    mlp_ratio: float = 4.0
    mlp_act_layer: str = "gelu"
    mlp_drop_rate: float = 0.0
    gmlp: bool = False
    patch_norm: bool = True
    norm_layer: str = "ln"
    downsample_version: str = "v2"
    patchembed_version: str = "v1"
    use_checkpoint: bool = False
    posembed: bool = False
    imgsize: int = 224
    drop_path_rate: float = 0.1
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    scan_backend: Optional[str] = field(default=None, metadata={"tokenred": True})

    def stage_dims(self) -> list[int]:
        if isinstance(self.dims, int):
            return [self.dims * 2 ** i for i in range(len(self.depths))]
        return [int(d) for d in self.dims]

    def validate(self) -> None:
        def bad(what: str, allowed: str) -> ValueError:
            return ValueError(f"VMamba config: {what}; supported: {allowed}")

        if self.forward_type not in FORWARD_TYPES:
            raise bad(f"forward_type={self.forward_type!r} is not implemented",
                      f"{sorted(FORWARD_TYPES)} (every released checkpoint uses v05_noz or v0)")
        if self.norm_layer not in ("ln", "ln2d"):
            raise bad(f"norm_layer={self.norm_layer!r}", "'ln', 'ln2d' (same function)")
        if self.downsample_version not in ("v1", "v3"):
            raise bad(f"downsample_version={self.downsample_version!r}", "'v1', 'v3'")
        if self.patchembed_version not in ("v1", "v2"):
            raise bad(f"patchembed_version={self.patchembed_version!r}", "'v1', 'v2'")
        if self.gmlp:
            raise bad("gmlp=True is not implemented", "gmlp=False (all released models)")
        if self.posembed:
            raise bad("posembed=True is not implemented", "posembed=False (all released models)")
        if self.ssm_init != "v0":
            raise bad(f"ssm_init={self.ssm_init!r} (its parameter layout differs)", "'v0'")
        if len(self.stage_dims()) != len(self.depths):
            raise bad(f"{len(self.depths)} depths but {len(self.stage_dims())} dims", "one dim per stage")
        if self.ssm_d_state < 1 or self.ssm_ratio <= 0:
            raise bad(f"ssm_d_state={self.ssm_d_state}, ssm_ratio={self.ssm_ratio}",
                      "d_state >= 1, ssm_ratio > 0")
        if self.scan_backend is not None:
            check_backend(self.scan_backend)


_KWARG_NAMES = {f.name for f in fields(VMambaConfig)}
#: official yaml MODEL.VSSM keys -> constructor kwargs
_YAML_KEYS = {
    "PATCH_SIZE": "patch_size", "IN_CHANS": "in_chans", "EMBED_DIM": "dims", "DEPTHS": "depths",
    "SSM_D_STATE": "ssm_d_state", "SSM_RATIO": "ssm_ratio", "SSM_DT_RANK": "ssm_dt_rank",
    "SSM_ACT_LAYER": "ssm_act_layer", "SSM_CONV": "ssm_conv", "SSM_CONV_BIAS": "ssm_conv_bias",
    "SSM_DROP_RATE": "ssm_drop_rate", "SSM_INIT": "ssm_init", "SSM_FORWARDTYPE": "forward_type",
    "MLP_RATIO": "mlp_ratio", "MLP_ACT_LAYER": "mlp_act_layer", "MLP_DROP_RATE": "mlp_drop_rate",
    "GMLP": "gmlp", "PATCH_NORM": "patch_norm", "NORM_LAYER": "norm_layer",
    "DOWNSAMPLE": "downsample_version", "PATCHEMBED": "patchembed_version", "POSEMBED": "posembed",
}
#: yaml keys that the official config system fills with a default when a yaml omits them; only
#: defaults that every released config shares are assumed, the structural keys must be present
_YAML_DEFAULTS = {"PATCH_SIZE": 4, "IN_CHANS": 3, "SSM_DT_RANK": "auto", "SSM_ACT_LAYER": "silu",
                  "SSM_CONV": 3, "SSM_DROP_RATE": 0.0, "SSM_INIT": "v0", "MLP_ACT_LAYER": "gelu",
                  "MLP_DROP_RATE": 0.0, "GMLP": False, "PATCH_NORM": True, "POSEMBED": False}
_YAML_IGNORED = {"SSM_RANK_RATIO"}


class VSSM(nn.Module):
    """VMamba. Input NCHW images; ``forward_features`` returns the final channel-last map."""

    def __init__(self, config: Optional[VMambaConfig] = None, **kwargs: Any):
        super().__init__()
        config = config or VMambaConfig(**kwargs)
        config.validate()
        self.config = config
        dims = config.stage_dims()
        self.num_classes = config.num_classes
        self.num_features = dims[-1]
        self.pretrained_cfg = imagenet_eval_config(config.num_classes)
        gate = FORWARD_TYPES[config.forward_type]
        if config.forward_type == "v0":  # the official v0 path hard-codes these
            conv, conv_bias, act = 3, True, "silu"
        else:
            conv, conv_bias, act = config.ssm_conv, config.ssm_conv_bias, config.ssm_act_layer
        ssm = dict(d_state=config.ssm_d_state, ssm_ratio=config.ssm_ratio,
                   dt_rank=config.ssm_dt_rank, act=act, d_conv=conv, conv_bias=conv_bias,
                   gate=gate, dropout=config.ssm_drop_rate, scan_backend=config.scan_backend)
        self.patch_embed = PatchEmbed(config.patchembed_version, config.in_chans, dims[0],
                                      config.patch_size, config.patch_norm)
        rates = drop_path_rates(config.drop_path_rate, sum(config.depths))
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(config.depths):
            blocks = nn.Sequential(*[
                VSSBlock(dims[i], rates[start + j], ssm, config.mlp_ratio, config.mlp_act_layer,
                         config.mlp_drop_rate) for j in range(depth)])
            start += depth
            if i + 1 < len(config.depths):
                down = (PatchMerging2D(dims[i], dims[i + 1]) if config.downsample_version == "v1"
                        else ConvDownsample(dims[i], dims[i + 1]))
            else:
                down = nn.Identity()
            self.layers.append(nn.Sequential(OrderedDict(blocks=blocks, downsample=down)))
        self.classifier = Classifier(dims[-1], config.num_classes)
        self.apply(_init_weights)

    def set_scan_backend(self, backend: Optional[str]) -> None:
        """Pin the selective-scan backend of every block (None: the process default)."""
        self.config.scan_backend = pin_scan_backend(self, backend)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Channel-last output of every stage, each after its downsample (the official
        ``layers[i]`` outputs)."""
        x = self.patch_embed(x)
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # 1x1-conv weights [out, in, 1, 1] (the official Linear2d) load into our linears
        squeeze_1x1_convs(state_dict, {prefix + n: p for n, p in self.named_parameters()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def squeeze_1x1_convs(state: dict, own: Mapping[str, Tensor]) -> None:
    """In place: [out, in, 1, 1] entries of ``state`` whose own tensor is 2-D become [out, in]."""
    for key, value in state.items():
        mine = own.get(key)
        if mine is not None and mine.dim() == 2 and value.dim() == 4 and value.shape[2:] == (1, 1):
            state[key] = value[:, :, 0, 0]


def from_official_config(cfg: Union[Mapping[str, Any], str, os.PathLike], **overrides: Any) -> VSSM:
    """Build a VMamba from the official VSSM constructor kwargs, or from an official yaml config
    (a dict with ``MODEL.VSSM`` keys, or a path to the .yaml file). ``overrides`` (our kwarg
    names, e.g. ``num_classes=10``, ``scan_backend="torch"``) win over the config."""
    return VSSM(official_config(cfg, **overrides))


def official_config(cfg: Union[Mapping[str, Any], str, os.PathLike], **overrides: Any) -> VMambaConfig:
    if isinstance(cfg, (str, os.PathLike)):
        import yaml

        with open(cfg) as fh:
            cfg = yaml.safe_load(fh)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"from_official_config needs a dict or a yaml path, got {type(cfg).__name__}")
    if "MODEL" in cfg:
        kwargs = _kwargs_from_yaml(cfg)
    else:
        kwargs = dict(cfg)
    kwargs.update(overrides)
    unknown = sorted(set(kwargs) - _KWARG_NAMES)
    if unknown:
        raise ValueError(f"unknown VSSM argument(s) {unknown}; known: {sorted(_KWARG_NAMES)}")
    for key in ("norm_layer", "ssm_act_layer", "mlp_act_layer", "forward_type"):
        if isinstance(kwargs.get(key), str):
            kwargs[key] = kwargs[key].lower()
    return VMambaConfig(**kwargs)


def _kwargs_from_yaml(cfg: Mapping[str, Any]) -> dict:
    model = cfg["MODEL"]
    model_type = str(model.get("TYPE", "vssm")).lower()
    if model_type not in ("vssm", "vmamba"):
        raise ValueError(f"MODEL.TYPE={model_type!r} is not a VMamba config")
    vssm = dict(model.get("VSSM") or {})
    unknown = sorted(set(vssm) - set(_YAML_KEYS) - _YAML_IGNORED)
    if unknown:
        raise ValueError(f"unknown MODEL.VSSM key(s) {unknown}; known: {sorted(_YAML_KEYS)}")
    for key, default in _YAML_DEFAULTS.items():
        vssm.setdefault(key, default)
    missing = sorted(set(_YAML_KEYS) - set(vssm))
    if missing:
        raise ValueError(f"MODEL.VSSM lacks {missing}: these have no default shared by all "
                         f"released configs, so they must be given")
    kwargs = {_YAML_KEYS[k]: v for k, v in vssm.items() if k in _YAML_KEYS}
    kwargs["num_classes"] = int(model.get("NUM_CLASSES", 1000))
    kwargs["drop_path_rate"] = float(model.get("DROP_PATH_RATE", 0.1))
    img = (cfg.get("DATA") or {}).get("IMG_SIZE")
    if img is not None:
        kwargs["imgsize"] = int(img)
    return kwargs


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
_OLD_NAMES = [  # the January 2024 (v0-era) names, renamed as the official loader does
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]


def remap_official_state_dict(state: Mapping[str, Tensor], model: Optional[nn.Module] = None) -> dict:
    """Official VMamba checkpoint keys -> ours: old v0-era names renamed, 1x1-conv weights
    [out, in, 1, 1] reshaped to linear weights."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _OLD_NAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    if model is not None:
        squeeze_1x1_convs(out, model.state_dict())
    return out


register_checkpoint_filter(VSSM, remap_official_state_dict)

#: official release files (GitHub release assets of MzeroMiko/VMamba)
_RELEASE = "https://github.com/MzeroMiko/VMamba/releases/download/"
_URLS = {
    "vmamba_tiny_s1l8": _RELEASE + "%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth",
    "vmamba_small_s1l20": _RELEASE + "%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth",
    "vmamba_base_s1l20": _RELEASE + "%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth",
    "vmamba_tiny_s2l5": _RELEASE + "%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth",
    "vmamba_small_s2l15": _RELEASE + "%23v2cls/vssm_small_0229_ckpt_epoch_222.pth",
    "vmamba_base_s2l15": _RELEASE + "%23v2cls/vssm_base_0229_ckpt_epoch_237.pth",
    "vmamba_tiny_v0": _RELEASE + "%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth",
    "vmamba_small_v0": _RELEASE + "%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth",
    "vmamba_base_v0": _RELEASE + "%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth",
}


def fetch_pretrained(model: nn.Module, name: str, url: str) -> None:
    """Download ``url`` into torch hub's cache (once) and load it strictly."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", url.rsplit("/", 1)[-1])
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, path, progress=False)
        except Exception as exc:
            raise CheckpointError(f"could not download pretrained weights for {name!r} from {url} "
                                  f"({type(exc).__name__}: {exc}); download the file elsewhere and "
                                  f"pass checkpoint=PATH (CLI: --checkpoint {name}=PATH)") from exc
    load_checkpoint(model, path)


# --------------------------------------------------------------------------------------------
# named models
# --------------------------------------------------------------------------------------------
_V2 = dict(ssm_d_state=1, ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3,
           ssm_conv_bias=False, ssm_drop_rate=0.0, ssm_init="v0", forward_type="v05_noz",
           mlp_ratio=4.0, mlp_act_layer="gelu", mlp_drop_rate=0.0, gmlp=False, patch_norm=True,
           norm_layer="ln2d", downsample_version="v3", patchembed_version="v2")
_V0 = dict(ssm_d_state=16, ssm_ratio=2.0, ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3,
           ssm_conv_bias=True, ssm_drop_rate=0.0, ssm_init="v0", forward_type="v0",
           mlp_ratio=0.0, gmlp=False, patch_norm=True, norm_layer="ln", downsample_version="v1",
           patchembed_version="v1")
CONFIGS: dict[str, dict] = {
    "vmamba_tiny_s1l8": dict(_V2, depths=[2, 2, 8, 2], dims=96, ssm_ratio=1.0, drop_path_rate=0.2),
    "vmamba_small_s1l20": dict(_V2, depths=[2, 2, 20, 2], dims=96, ssm_ratio=1.0, drop_path_rate=0.3),
    "vmamba_base_s1l20": dict(_V2, depths=[2, 2, 20, 2], dims=128, ssm_ratio=1.0, drop_path_rate=0.5),
    "vmamba_tiny_s2l5": dict(_V2, depths=[2, 2, 5, 2], dims=96, ssm_ratio=2.0, drop_path_rate=0.2),
    "vmamba_small_s2l15": dict(_V2, depths=[2, 2, 15, 2], dims=96, ssm_ratio=2.0, drop_path_rate=0.3),
    "vmamba_base_s2l15": dict(_V2, depths=[2, 2, 15, 2], dims=128, ssm_ratio=2.0, drop_path_rate=0.6),
    "vmamba_tiny_v0": dict(_V0, depths=[2, 2, 9, 2], dims=96, drop_path_rate=0.2),
    "vmamba_small_v0": dict(_V0, depths=[2, 2, 27, 2], dims=96, drop_path_rate=0.3),
    "vmamba_base_v0": dict(_V0, depths=[2, 2, 27, 2], dims=128, drop_path_rate=0.6),
}
_DOCS = {
    "vmamba_tiny_s1l8": "VMamba-T[s1l8] (v2; 30.2M params, 4.91 GFLOPs, 82.6% top-1)",
    "vmamba_small_s1l20": "VMamba-S[s1l20] (v2; 49.0M, 8.61 G, 83.3%)",
    "vmamba_base_s1l20": "VMamba-B[s1l20] (v2; 86.6M, 15.22 G, 83.8%)",
    "vmamba_tiny_s2l5": "VMamba-T[s2l5] (v2; 30.7M, 4.86 G, 82.5%)",
    "vmamba_small_s2l15": "VMamba-S[s2l15] (v2; 50.1M, 8.72 G, 83.6%)",
    "vmamba_base_s2l15": "VMamba-B[s2l15] (v2; 88.6M, 15.36 G, 83.9%)",
    "vmamba_tiny_v0": "Vanilla-VMamba-T (v0; 22.9M, 5.63 G, 82.2%)",
    "vmamba_small_v0": "Vanilla-VMamba-S (v0; 44.4M, 11.23 G, 83.5%)",
    "vmamba_base_v0": "Vanilla-VMamba-B (v0; 76.3M, 18.02 G, 83.7%)",
}


def _make_factory(name: str) -> Callable[..., VSSM]:
    def factory(pretrained: bool = False, **kwargs: Any) -> VSSM:
        model = VSSM(VMambaConfig(**{**CONFIGS[name], **kwargs}))
        if pretrained:
            fetch_pretrained(model, name, _URLS[name])
        return model

    factory.__name__ = name
    factory.__doc__ = _DOCS[name]
    return factory


for _name in CONFIGS:
    register_backbone(_name, family="vmamba", doc=_DOCS[_name])(_make_factory(_name))


register_site_adapter(VSSM, GridAdapter)

__all__ = ["VSSM", "VMambaConfig", "SS2D", "VSSBlock", "PatchMerging2D", "from_official_config",
           "official_config", "remap_official_state_dict", "CONFIGS", "GridAdapter"]
