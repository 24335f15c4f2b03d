"""VMamba's 2D selective-scan mixer (``SS2D``) and what every model built from it shares: the
v1 patch-merging downsample, weight init, the scan-backend pin and the ``grid`` sites (each SS2D
under ``layers.<stage>.blocks.<j>`` is a site at the map entering its cross-scan). Used by
``backbones/vmamba.py`` and ``backbones/medmamba.py``; neither family imports the other.

SS2D lays the four scan directions out time-major, which is what tokenred's ``torch`` scan
backend works in, so no transposes are needed around the scan. On the ``cpp`` backend, inference
runs the cross-scan, scan and cross-merge as one kernel on the map itself, or on the tokens a grid
reducer kept (in the same four orders of their positions).
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenred.kernels import check_backend, resolve_backend, scan_cpp, selective_scan
from tokenred.sites import GridContext, ReducedGrid, Site, reset_every_forward, take_tokens

K_DIRECTIONS = 4
#: activation names of VMamba's configs
ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; choose one of "
                         f"{sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class SS2D(nn.Module):
    """VMamba's 2D selective-scan mixer on a channel-last map [B, H, W, C] -> [B, H, W, C].

    in_proj -> depthwise conv -> act -> [grid site] -> cross-scan (4 directions) -> per-direction
    x_proj / dt_proj -> selective scan -> cross-merge -> out_norm -> (y * act(z)) -> out_proj.
    ``gate`` (forward types v0 / v05) splits in_proj's output into x rows then z rows.
    """

    def __init__(self, d_model: int, d_state: int, ssm_ratio: float, dt_rank: Union[int, str],
                 act: str = "silu", d_conv: int = 3, conv_bias: bool = True, gate: bool = False,
                 dropout: float = 0.0, scan_backend: Optional[str] = None):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.d_model, self.d_inner, self.d_state, self.dt_rank = d_model, d_inner, d_state, rank
        self.gate = gate
        self.scan_backend = check_backend(scan_backend) if scan_backend is not None else None
        self.in_proj = nn.Linear(d_model, d_inner * (2 if gate else 1), bias=False)
        self.act = _activation(act)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2,
                                groups=d_inner, bias=conv_bias)
        k = K_DIRECTIONS
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        #: set by tokenred's site adapter: called on the map entering the scan
        self.grid_hook: Optional[Callable[[Tensor], Tensor]] = None
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation (S4D-real A, dt log-uniform in [dt_min, dt_max])."""
        nn.init.uniform_(self.x_proj_weight, -self.d_inner ** -0.5, self.d_inner ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=1e-4)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))   # inverse softplus
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_logs.copy_(torch.log(a).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        xz = self.in_proj(x)
        if self.gate:
            x, z = xz.chunk(2, dim=-1)
        else:
            x, z = xz, None
        # depthwise conv on an NCHW view of the channel-last map (channels_last memory format)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        reduced = self.grid_hook(x) if self.grid_hook is not None else x
        if isinstance(reduced, Tensor):
            if reduced.shape != x.shape:
                raise RuntimeError(f"a grid reducer returned a map of shape {tuple(reduced.shape)} "
                                   f"for {tuple(x.shape)}; a smaller map must come as a "
                                   f"tokenred.sites.ReducedGrid with its restore")
            y = self.out_norm(self.scan_2d(reduced))
        else:
            y = self._scan_reduced(reduced, x.shape)
            if reduced.copies:
                # restore only copies tokens, so the per-token out_norm (and out_proj when no
                # gate follows) give the same result on the reduced tokens, for less work
                y = self.out_norm(y)
                if z is None:
                    return self.dropout(self._restored(reduced, self.out_proj(y), x.shape))
                y = self._restored(reduced, y, x.shape)
            else:
                y = self.out_norm(self._restored(reduced, y, x.shape))
        if z is not None:
            y = y * self.act(z)
        return self.dropout(self.out_proj(y))

    def _scan_reduced(self, reduced: Any, full_shape: torch.Size) -> Tensor:
        if reduced.positions is None:
            if reduced.x.dim() != 4:
                raise RuntimeError(f"a reduced grid without positions must be a map [B, h, w, C]; "
                                   f"got shape {tuple(reduced.x.shape)}")
            return self.scan_2d(reduced.x)
        return self.scan_tokens(reduced.x, reduced.positions, full_shape[1], full_shape[2])

    @staticmethod
    def _restored(reduced: Any, y: Tensor, full_shape: torch.Size) -> Tensor:
        out = reduced.restore(y)
        if tuple(out.shape[:3]) != tuple(full_shape[:3]) or out.shape[3] != y.shape[-1]:
            raise RuntimeError(f"a grid reducer's restore returned {tuple(out.shape)}; expected "
                               f"{(*full_shape[:3], y.shape[-1])} (the full map)")
        return out

    def scan_2d(self, x: Tensor) -> Tensor:
        """Cross-scan, selective scan, cross-merge on a channel-last map [B, H, W, D]."""
        weights = (self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs,
                   self.Ds)
        if scan_cpp.cross_scan_applies(x, resolve_backend(self.scan_backend, x.device), weights):
            # (cpp inference: the same three steps in one kernel, no direction sequences built)
            return scan_cpp.cross_scan_2d(x, *weights)
        batch, height, width, dim = x.shape
        length = height * width
        # the four directions, time-major [L, B, K, D]: row-major, column-major, both reversed
        xs = x.new_empty(length, batch, K_DIRECTIONS, dim)
        xs[:, :, 0].view(height, width, batch, dim).copy_(x.permute(1, 2, 0, 3))
        xs[:, :, 1].view(width, height, batch, dim).copy_(x.permute(2, 1, 0, 3))
        xs[:, :, 2:] = xs[:, :, :2].flip(0)
        y = self.scan_directions(xs)
        rows = y[:, :, 0] + y[:, :, 2].flip(0)        # positions in row-major order
        cols = y[:, :, 1] + y[:, :, 3].flip(0)        # positions in column-major order
        out = rows.view(height, width, batch, dim) + cols.view(width, height, batch, dim).transpose(0, 1)
        return out.permute(2, 0, 1, 3)

    def scan_tokens(self, x: Tensor, positions: Tensor, height: int, width: int) -> Tensor:
        """The four-direction scan of a token subset [B, T, D] at ``positions`` ([B, T, 2] or
        [T, 2], (row, col) in an H x W map): the tokens are visited in row-major and column-major
        order of their positions and both reversed. Returns [B, T, D] in the input's order."""
        batch, count, dim = x.shape
        if positions.shape[-2:] != (count, 2) or positions.dim() not in (2, 3):
            raise RuntimeError(f"positions must be [B, T, 2] or [T, 2] for {count} tokens; got "
                               f"{tuple(positions.shape)}")
        positions = positions.to(x.device)
        by_row = (positions[..., 0] * width + positions[..., 1]).argsort(dim=-1)
        by_col = (positions[..., 1] * height + positions[..., 0]).argsort(dim=-1)
        weights = (self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs,
                   self.Ds)
        if scan_cpp.cross_scan_applies(x, resolve_backend(self.scan_backend, x.device), weights):
            # (cpp inference: the fused kernel visits the kept tokens in each direction's order,
            # as it visits a whole map, so reduced and full maps take the same kind of kernel)
            return scan_cpp.cross_scan_tokens(x, by_row, by_col, *weights)
        xs = x.new_empty(count, batch, K_DIRECTIONS, dim)
        xs[:, :, 0] = take_tokens(x, by_row).transpose(0, 1)
        xs[:, :, 1] = take_tokens(x, by_col).transpose(0, 1)
        xs[:, :, 2:] = xs[:, :, :2].flip(0)
        y = self.scan_directions(xs)
        rows = (y[:, :, 0] + y[:, :, 2].flip(0)).transpose(0, 1)     # [B, T, D] in row order
        cols = (y[:, :, 1] + y[:, :, 3].flip(0)).transpose(0, 1)     # [B, T, D] in column order
        return take_tokens(rows, by_row.argsort(dim=-1)) + take_tokens(cols, by_col.argsort(dim=-1))

    def scan_directions(self, xs: Tensor) -> Tensor:
        """Selective scan of time-major sequences xs [L, B, K, D], one per direction, each with
        its own projections; returns [L, B, K, D]."""
        length, batch, k, dim = xs.shape
        n, rank = self.d_state, self.dt_rank
        # per-direction projections as one batched matmul over directions: [K, L*B, .]
        seq = xs.view(length * batch, k, dim).transpose(0, 1)
        x_dbl = torch.bmm(seq, self.x_proj_weight.transpose(1, 2))           # [K, LB, R+2N]
        dts = torch.bmm(x_dbl[..., :rank], self.dt_projs_weight.transpose(1, 2))  # [K, LB, D]
        bs = x_dbl[..., rank:rank + n].view(k, length, batch, n).permute(2, 0, 3, 1)
        cs = x_dbl[..., rank + n:].view(k, length, batch, n).permute(2, 0, 3, 1)
        u = xs.view(length, batch, k * dim).permute(1, 2, 0)                # [B, KD, L] view
        # time-major [L, B, K*D] storage, handed over as a [B, KD, L] view (no copy in the scan)
        delta = dts.view(k, length, batch, dim).permute(1, 2, 0, 3).reshape(
            length, batch, k * dim).permute(1, 2, 0)
        y = selective_scan(u, delta, -torch.exp(self.A_logs.float()), bs, cs, self.Ds.float(),
                           None, self.dt_projs_bias.float().view(-1), True, self.scan_backend)
        return y.permute(2, 0, 1).reshape(length, batch, k, dim).to(xs.dtype)   # time-major


class PatchMerging2D(nn.Module):
    """Downsample v1: concatenate each 2x2 neighbourhood (Swin order), LayerNorm, linear 4C->2C.
    Odd sizes are padded with zeros at the bottom/right (VMamba) or cropped (MedMamba)."""

    def __init__(self, dim: int, out_dim: int, odd: str = "pad"):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)
        self.odd = odd

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            if self.odd == "pad":
                x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
            else:
                x = x[:, :height - height % 2, :width - width % 2]
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


def pin_scan_backend(model: nn.Module, backend: Optional[str]) -> Optional[str]:
    """Set the selective-scan backend of every SS2D in ``model``; returns the checked name."""
    backend = check_backend(backend) if backend is not None else None
    for m in model.modules():
        if isinstance(m, SS2D):
            m.scan_backend = backend
    return backend


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)



# --------------------------------------------------------------------------------------------
# grid sites
# --------------------------------------------------------------------------------------------
class GridState:
    """Token counts of the last forward: every grid site's name -> tokens its scan ran on
    (selected sites after the reduction, the others their full map)."""

    def __init__(self, stage_of: Mapping[str, int]) -> None:
        self.tokens: dict[str, int] = {}
        self._stage_of = dict(stage_of)

    def reset(self) -> None:
        self.tokens.clear()

    def per_stage(self) -> list[int]:
        """Fewest tokens any scan of each stage ran on, stage by stage."""
        stages: dict[int, int] = {}
        for name, count in self.tokens.items():
            stage = self._stage_of[name]
            stages[stage] = min(count, stages.get(stage, count))
        return [stages[k] for k in sorted(stages)]

    @property
    def tokens_out(self) -> Optional[str]:
        """Per-stage scanned tokens as ``"784/196/196/49"`` (the map always leaves whole)."""
        return "/".join(str(c) for c in self.per_stage()) or None


class GridInstallation:
    """Hooks every grid site: the chosen ones run the reducer, the others only count tokens (so
    the state covers the whole network)."""

    def __init__(self, model: nn.Module, reducer: Any, all_sites: Sequence[tuple[Site, SS2D]],
                 chosen: set):
        self.state = GridState({s.name: s.stage for s, _ in all_sites})
        self._mixers = [m for _, m in all_sites]
        selected = [(s, m) for s, m in all_sites if s.name in chosen]
        for index, (site, mixer) in enumerate(selected):
            mixer.grid_hook = self._hook(reducer, GridContext(site, index, len(selected)))
        for site, mixer in all_sites:
            if site.name not in chosen:
                mixer.grid_hook = self._counter(site.name)

        self._remove_reset = reset_every_forward(model, self.state, reducer)

    def _hook(self, reducer: Any, ctx: GridContext) -> Callable[[Tensor], Union[Tensor, ReducedGrid]]:
        tokens = self.state.tokens

        def hook(x: Tensor) -> Union[Tensor, ReducedGrid]:
            out = reducer.reduce_grid(x, ctx)
            # tokens the scan runs on (the full map when the reducer passed it through)
            tokens[ctx.site.name] = (out.num_tokens if isinstance(out, ReducedGrid)
                                     else int(x.shape[1] * x.shape[2]))
            return out

        return hook

    def _counter(self, name: str) -> Callable[[Tensor], Tensor]:
        tokens = self.state.tokens

        def count(x: Tensor) -> Tensor:
            tokens[name] = int(x.shape[1] * x.shape[2])
            return x

        return count

    def remove(self) -> None:
        for mixer in self._mixers:
            mixer.grid_hook = None
        self._mixers = []
        self._remove_reset()


class GridAdapter:
    """Sites of any model whose mixers are ``SS2D`` modules under ``layers.<i>.blocks.<j>``."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._sites: list[tuple[Site, SS2D]] = []
        block = 0
        for name, module in model.named_modules():
            if isinstance(module, SS2D):
                match = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", name)
                if match is None:
                    continue
                stage, j = int(match.group(1)), int(match.group(2))
                site_name = name.rsplit(".", 1)[0]
                self._sites.append((Site(site_name, "grid", stage, block, j), module))
                block += 1

    def sites(self) -> list[Site]:
        return [s for s, _ in self._sites]

    def install(self, reducer: Any, sites: Sequence[Site]) -> GridInstallation:
        busy = [s.name for s, m in self._sites if m.grid_hook is not None]
        if busy:
            raise RuntimeError(f"grid site(s) {busy[:3]} already have a hook installed")
        return GridInstallation(self.model, reducer, self._sites, {s.name for s in sites})
