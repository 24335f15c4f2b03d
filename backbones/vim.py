"""Vision Mamba (Vim, hustvl/Vim) in plain PyTorch: runs on CPU and GPU with a plain install.

A plain (non-hierarchical) stack of bidirectional Mamba layers over the patch sequence, with the
class token inserted in the middle (``M // 2`` of M patches). The semantics follow the official
fast path (bimamba v2), written from its description (``../shared/fixtures/VIM.md``):

- patch embedding: ``Conv2d(3, D, patch_size, stride)`` without norm, tokens row-major;
- residual stream: block i returns (mixer output, residual entering its mixer); the residual is
  the embedding plus every earlier mixer output, kept in fp32; the mixer reads RMSNorm of it;
- mixer: shared ``in_proj`` (no bias) to x and z; a forward branch (causal depthwise conv,
  SiLU, ``x_proj`` -> dt/B/C, softplus(dt_proj(dt) + bias), selective scan with D skip, SiLU(z)
  gate) and a backward branch with its own conv/x_proj/dt_proj/A/D on the *flipped* x and z,
  flipped back; ``out_proj`` of their mean (``if_divide_out``);
- head: RMSNorm_f of the last residual sum, the class token's row, a linear classifier.

The official slow path (``use_fast_path=False``) ignores the backward branch; it is not what the
released models compute and is not reproduced. Configurations other than the released ones'
(RoPE, a class token at the front or none, two class tokens, LayerNorm, bimamba v1) are refused
by name rather than approximated.

Token-reduction sites: ``layers.i`` is the residual stream after block i's mixer (what block
i + 1 adds up and normalises), for every block but the last; an order-sensitive ``sequence`` site
(``tokenred.sites``): the reducer gets the class token as the one prefix token and each patch's
position, the site puts the output back in ascending position order with the class token where
the reducer says (default: the middle, M // 2 of the M patches left) and the head reads it there.
A reduction of the sum is the reduction of both streams: merging and gathering are linear, so
merging mixer output and residual separately (as R-MeeTo and ToP-ViM do) gives the same sum up to
float rounding. Site quantities: ``metric`` (the block's mixer output) and ``backward_output``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from tokenred.checkpoint import CheckpointError
from tokenred.kernels import check_backend, selective_scan
from tokenred.kernels.fused import causal_conv1d_silu, causal_conv1d_silu_applies
from tokenred.layers import drop_path_rates, imagenet_eval_config
from tokenred.registry import register_backbone
from tokenred.sites import (SequenceContext, SequenceState, SequenceTokens, Site,
                            SiteQuantityError, in_sequence_order, register_site_adapter,
                            reset_every_forward, take_tokens)


class RMSNorm(nn.Module):
    """y = x * rsqrt(mean(x^2) + eps) * weight, computed in fp32, returned in x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(x.dtype)


class BiMambaMixer(nn.Module):
    """Mamba mixer with bimamba v2: shared in/out projections, two scan directions."""

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 divide_out: bool = True, scan_backend: Optional[str] = None):
        super().__init__()
        self.d_inner = expand * dim
        self.dt_rank = math.ceil(dim / 16)
        self.d_state = d_state
        self.d_conv = d_conv
        self.divide_out = divide_out
        # None: the process default (tokenred.kernels.set_default_backend) decides at call time
        self.scan_backend = check_backend(scan_backend) if scan_backend is not None else None
        self.keep_backward_output = False
        self.backward_output: Optional[torch.Tensor] = None
        e, r, n = self.d_inner, self.dt_rank, d_state
        self.in_proj = nn.Linear(dim, 2 * e, bias=False)
        for suffix in ("", "_b"):   # each direction's own parameters, named as officially
            setattr(self, "conv1d" + suffix, nn.Conv1d(e, e, d_conv, groups=e, bias=True,
                                                       padding=d_conv - 1))
            setattr(self, "x_proj" + suffix, nn.Linear(e, r + 2 * n, bias=False))
            setattr(self, "dt_proj" + suffix, nn.Linear(r, e, bias=True))
            a = torch.arange(1, n + 1, dtype=torch.float32).repeat(e, 1)
            setattr(self, ("A_log" if not suffix else "A_b_log"), nn.Parameter(torch.log(a)))
            setattr(self, "D" + suffix, nn.Parameter(torch.ones(e)))
        self.out_proj = nn.Linear(e, dim, bias=False)
        self._init_dt()

    def _init_dt(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        # Mamba's init: dt_proj bias = softplus^-1 of dt ~ logU(dt_min, dt_max)
        if self.in_proj.weight.device.type == "meta":
            return
        with torch.no_grad():
            for proj in (self.dt_proj, self.dt_proj_b):
                std = self.dt_rank ** -0.5
                nn.init.uniform_(proj.weight, -std, std)
                dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                               + math.log(dt_min)).clamp(min=1e-4)
                proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _branch(self, x: torch.Tensor, z: torch.Tensor, suffix: str) -> torch.Tensor:
        """One direction on x, z [B, E, L] (already flipped for the backward one)."""
        length = x.shape[-1]
        conv = getattr(self, "conv1d" + suffix)
        if causal_conv1d_silu_applies(x, conv.weight, conv.bias):   # CPU inference
            x = causal_conv1d_silu(x, conv.weight, conv.bias)        # (time-major storage)
        else:
            x = F.silu(conv(x)[..., :length])          # causal: left padding, keep the first L
        x_dbl = F.linear(x.transpose(1, 2), getattr(self, "x_proj" + suffix).weight)
        dt, b, c = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt_proj = getattr(self, "dt_proj" + suffix)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)
        a = -torch.exp(getattr(self, "A_log" if not suffix else "A_b_log").float())
        return selective_scan(x, delta, a, b.transpose(1, 2), c.transpose(1, 2),
                              getattr(self, "D" + suffix).float(), z,
                              delta_bias=dt_proj.bias.float(), delta_softplus=True,
                              backend=self.scan_backend)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u [B, L, D] -> [B, L, D]."""
        xz = F.linear(u, self.in_proj.weight).transpose(1, 2)   # [B, 2E, L]
        x, z = xz.chunk(2, dim=1)
        y = self._branch(x, z, "")
        y_b = self._branch(x.flip(-1), z.flip(-1), "_b").flip(-1)
        if self.keep_backward_output:   # a site's ToP-ViM score reads it (sequence order)
            self.backward_output = y_b
        y = (y + y_b) / 2 if self.divide_out else y + y_b
        return F.linear(y.transpose(1, 2).to(u.dtype), self.out_proj.weight)


class VimBlock(nn.Module):
    """add -> RMSNorm -> mixer; returns (mixer output, residual entering the mixer)."""

    def __init__(self, dim: int, d_state: int, drop_path: float, eps: float, divide_out: bool,
                 scan_backend: Optional[str]):
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.mixer = BiMambaMixer(dim, d_state, divide_out=divide_out, scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor]):
        residual = hidden.float() if residual is None else residual + self.drop_path(hidden).float()
        return self.mixer(self.norm(residual.to(hidden.dtype))), residual


class VisionMamba(nn.Module):
    """Vim with a middle class token (the released configuration)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, stride: int = 16,
                 depth: int = 24, embed_dim: int = 192, d_state: int = 16, channels: int = 3,
                 num_classes: int = 1000, drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 norm_epsilon: float = 1e-5, if_divide_out: bool = True,
                 scan_backend: Optional[str] = None):
        super().__init__()
        grid = (img_size - patch_size) // stride + 1
        if grid < 1:
            raise ValueError(f"img_size={img_size} is smaller than patch_size={patch_size}")
        self.img_size, self.patch_size, self.stride = img_size, patch_size, stride
        self.grid = (grid, grid)
        self.num_patches = grid * grid
        self.cls_position = self.num_patches // 2    # M // 2, not L // 2 (odd M: 24 of 49)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(channels, embed_dim, patch_size, stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, depth)
        self.layers = nn.ModuleList(VimBlock(embed_dim, d_state, rates[i], norm_epsilon,
                                             if_divide_out, scan_backend) for i in range(depth))
        self.norm_f = RMSNorm(embed_dim, norm_epsilon)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = imagenet_eval_config(num_classes, img_size)
        if self.cls_token.device.type != "meta":
            trunc_normal_(self.pos_embed, std=0.02)
            trunc_normal_(self.cls_token, std=0.02)

    def set_scan_backend(self, name: Optional[str]) -> None:
        name = check_backend(name) if name is not None else None
        for layer in self.layers:
            layer.mixer.scan_backend = name

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patches with the class token inserted at M // 2, plus the position embedding."""
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)      # [B, M, D] row-major
        cls = self.cls_token.expand(t.shape[0], -1, -1)
        p = self.cls_position
        t = torch.cat([t[:, :p], cls, t[:, p:]], dim=1) + self.pos_embed
        return self.pos_drop(t)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed(x), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        residual = residual + self.layers[-1].drop_path(hidden).float()
        return self.norm_f(residual.to(hidden.dtype))[:, self.cls_position]

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = self.forward_features(x)
        return features if return_features else self.head(features)


# --------------------------------------------------------------------------------------------
# the official constructor's keyword arguments
# --------------------------------------------------------------------------------------------
#: official kwargs this implementation takes as they are
_TAKEN = {"img_size", "patch_size", "stride", "depth", "embed_dim", "d_state", "channels",
          "num_classes", "drop_rate", "drop_path_rate", "norm_epsilon", "if_divide_out"}
#: official kwargs whose released value is the only one implemented (value -> required)
_FIXED = {"rms_norm": True, "residual_in_fp32": True, "if_rope": False, "if_rope_residual": False,
          "bimamba_type": "v2", "if_cls_token": True, "use_middle_cls_token": True,
          "use_double_cls_token": False, "if_bidirectional": False, "if_abs_pos_embed": True}
#: official kwargs with no effect on an eval forward of the released models
_INERT = {"fused_add_norm", "final_pool_type", "flip_img_sequences_ratio", "ssm_cfg",
          "initializer_cfg", "device", "dtype", "if_devide_out", "pt_hw_seq_len"}


def from_official_config(cfg: Mapping[str, Any], **overrides: Any) -> VisionMamba:
    """``VisionMamba`` from the official constructor's kwargs (e.g. a factory's). Values this
    implementation does not reproduce are refused by name."""
    kwargs = {**dict(cfg), **overrides}
    for key, required in _FIXED.items():
        if key in kwargs and kwargs[key] != required:
            raise ValueError(f"Vim {key}={kwargs[key]!r} is not implemented (only {required!r}, "
                             f"the released models' setting)")
    if kwargs.get("ssm_cfg"):
        raise ValueError(f"Vim ssm_cfg={kwargs['ssm_cfg']!r} is not implemented")
    unknown = sorted(set(kwargs) - _TAKEN - set(_FIXED) - _INERT - {"scan_backend"})
    if unknown:
        raise ValueError(f"unknown Vim argument(s) {unknown}")
    return VisionMamba(**{k: v for k, v in kwargs.items() if k in _TAKEN or k == "scan_backend"})


#: registered name -> (official factory name, its VisionMamba kwargs)
CONFIGS = {
    "vim_tiny": ("vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                 dict(patch_size=16, embed_dim=192, depth=24)),
    "vim_small": ("vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                  dict(patch_size=16, embed_dim=384, depth=24)),
    "vim_base": ("vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
                 dict(patch_size=16, embed_dim=768, depth=24)),
    "vim_tiny_stride8": ("vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                         dict(patch_size=16, stride=8, embed_dim=192, depth=24)),
    "vim_small_stride8": ("vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                          dict(patch_size=16, stride=8, embed_dim=384, depth=24)),
}


def _make_factory(name: str, official: str, config: dict):
    def factory(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
        if pretrained:
            raise CheckpointError(f"{name}: Vim's weights are on the Hugging Face hub (hustvl/"
                                  f"Vim-*) and are not fetched automatically; download the .pth and "
                                  f"pass checkpoint=PATH (CLI: --checkpoint {name}=PATH)")
        return VisionMamba(**{**config, **kwargs})

    factory.__name__ = name
    factory.__doc__ = f"Vim ({official}; patch {config['patch_size']}, stride " \
                      f"{config.get('stride', 16)}, D={config['embed_dim']}, depth {config['depth']})"
    return factory


for _name, (_official, _config) in CONFIGS.items():
    _factory = _make_factory(_name, _official, _config)
    register_backbone(_name, family="vim", doc=_factory.__doc__)(_factory)
    register_backbone(_official, family="vim", doc=f"= {_name}")(_factory)

__all__ = ["VisionMamba", "BiMambaMixer", "VimBlock", "RMSNorm", "from_official_config", "CONFIGS"]


# --------------------------------------------------------------------------------------------
# token-reduction sites
# --------------------------------------------------------------------------------------------
#: the site quantities a Vim block gives (see the module docstring)
SITE_QUANTITIES = frozenset({"metric", "backward_output"})


def middle_slot(num_patches: int) -> int:
    """Vim's class-token place among ``num_patches`` patches: M // 2."""
    return num_patches // 2


class VimAdapter:
    def __init__(self, model: VisionMamba):
        self.model = model

    def sites(self) -> list[Site]:
        return [Site(name=f"layers.{i}", kind="sequence", stage=0, block=i, index_in_stage=i,
                     num_prefix_tokens=1, order_sensitive=True)
                for i in range(len(self.model.layers) - 1)]

    def install(self, reducer: Any, sites: Sequence[Site]) -> "VimInstallation":
        return VimInstallation(self.model, reducer, list(sites))


class VimInstallation:
    """Replaces ``forward_features`` with one that hands the residual stream to the reducer after
    each selected block; ``remove`` deletes the instance attributes again."""

    def __init__(self, model: VisionMamba, reducer: Any, sites: list[Site]):
        self.model, self.reducer = model, reducer
        self.state = SequenceState()
        missing = sorted(set(getattr(reducer, "requires", ())) - SITE_QUANTITIES)
        if missing:
            raise SiteQuantityError(f"{reducer.name} needs {', '.join(missing)}: a Vim block gives "
                                    f"{sorted(SITE_QUANTITIES)} (no attention)")
        self._at_block = {s.block: (i, s) for i, s in enumerate(sites)}
        self._num_sites = len(sites)
        keep_backward = "backward_output" in getattr(reducer, "requires", ())
        self._mixers = [model.layers[s.block].mixer for s in sites] if keep_backward else []
        for mixer in self._mixers:
            mixer.keep_backward_output = True
        self._remove_reset = reset_every_forward(model.patch_embed.proj, self.state, reducer)
        model.forward_features = self._forward_features

    def _forward_features(self, x: torch.Tensor) -> torch.Tensor:
        model, state = self.model, self.state
        hidden, residual = model.embed(x), None
        batch, length = hidden.shape[:2]
        slot = state.class_slot = model.cls_position
        state.patch_grid = model.grid
        state.patch_columns = torch.cat([torch.arange(slot), torch.arange(slot + 1, length)])
        patch = torch.arange(length, device=hidden.device)
        state.positions = torch.where(patch < slot, patch, patch - 1).masked_fill(
            patch == slot, -1).expand(batch, -1)
        if self.reducer.trace_source:
            state.source = torch.eye(length, device=hidden.device, dtype=hidden.dtype).expand(
                batch, -1, -1)
        for i, layer in enumerate(model.layers):
            hidden, residual = layer(hidden, residual)
            if i in self._at_block:
                stream = residual + layer.drop_path(hidden).float()
                stream, slot = self._reduce(stream, hidden, layer.mixer, i, slot)
                # the next block adds nothing more: the whole stream is in the residual
                hidden, residual = stream.new_zeros(stream.shape, dtype=hidden.dtype), stream
        residual = residual + model.layers[-1].drop_path(hidden).float()
        return model.norm_f(residual.to(hidden.dtype))[:, slot]

    def _reduce(self, stream: torch.Tensor, hidden: torch.Tensor, mixer: nn.Module, block: int,
                slot: int) -> tuple[torch.Tensor, int]:
        state, reducer = self.state, self.reducer
        index, site = self._at_block[block]
        length = stream.shape[1]
        # the class token first (the one prefix token), then the patches in sequence order
        front = torch.cat([torch.tensor([slot]), torch.arange(slot),
                           torch.arange(slot + 1, length)]).to(stream.device)
        sequence_order = torch.empty_like(front)
        sequence_order[front] = torch.arange(length, device=stream.device)
        tokens = SequenceTokens(stream, state.size, state.source, None, state.positions).take(front)
        providers = {"metric": lambda: take_tokens(hidden, front)}
        if mixer.keep_backward_output:
            providers["backward_output"] = lambda: take_tokens(
                mixer.backward_output.transpose(1, 2), front)
        ctx = SequenceContext(site, index, self._num_sites, class_token=True, distill_token=False,
                              trace_source=reducer.trace_source, providers=providers,
                              placement=getattr(reducer, "sequence_placement", "attention"),
                              depth=len(self.model.layers), num_patches=self.model.num_patches,
                              sequence_order=sequence_order)
        out = reducer.reduce_sequence(tokens, ctx)
        if out is tokens:          # nothing reduced: the stream as it was
            state.tokens[site.name], state.class_slots[site.name] = length, slot
            return stream, slot
        ordered, slot = in_sequence_order(out, 1, middle_slot)
        state.record(site, ordered, slot)
        return ordered.x, slot

    def remove(self) -> None:
        self._remove_reset()
        self.model.__dict__.pop("forward_features", None)
        for mixer in self._mixers:
            mixer.keep_backward_output = False
            mixer.backward_output = None


register_site_adapter(VisionMamba, VimAdapter)
