"""``quartermap``: QuarterMap (Chi, Chiang, Marculescu, Wu; ICML 2025 ES-FoMo; arXiv 2507.09514).

Post-training pruning of a visual SSM's 2D activations: at each selected grid site the map
entering the four-direction scan keeps one position of every ``stride`` x ``stride`` block
(2 x 2: a quarter of the map), the ordinary cross-scan runs on that smaller map, and its output is
restored to the exact original H x W by nearest-neighbour upsampling (each block copies its kept
position's output). No merging, no matching, no retraining.

Written from the paper's abstract (its body and code are not public): which position of a block
is kept (``offset``), averaging instead of picking (``mode="avg"``) and the layer choice
(``where``) are parameters; the default sites are ``tokenred.sites.DEFAULT_GRID_WHERE`` (stage 0),
chosen by measurement (README, "Grid sites"; ``benchmarks/grid_methods.py --where``).

Odd sizes: the last block of a row or column is partial (7 -> 4 blocks of 2, 2, 2, 1). It keeps
its position at ``offset`` when it has one, else its last position; ``avg`` averages what the
block holds. Upsampling gives every position its block's value, so 7 x 7 -> 4 x 4 -> 7 x 7.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from tokenred import Reducer, register_method
from tokenred.params import Choice, Int, Param, ParameterError
from tokenred.sites import GridContext, ReducedGrid, Site, default_grid_sites


def kept_positions(size: int, stride: int, offset: int) -> list[int]:
    """Index kept in each block of ``stride`` along an axis of ``size`` (partial last block
    included): ``min(block * stride + offset, size - 1)``."""
    return [min(b * stride + offset, size - 1) for b in range(-(-size // stride))]


def subsample_grid(x: torch.Tensor, stride: int, offset: tuple[int, int] = (0, 0),
                   mode: str = "pick") -> torch.Tensor:
    """[B, H, W, C] -> [B, ceil(H/s), ceil(W/s), C]: one position per block (``pick``) or the
    block's mean (``avg``; a partial block averages the positions it holds)."""
    height, width = int(x.shape[1]), int(x.shape[2])
    if mode == "avg":
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), stride, stride, ceil_mode=True)
        return pooled.permute(0, 2, 3, 1)
    rows = kept_positions(height, stride, offset[0])
    cols = kept_positions(width, stride, offset[1])
    if rows == list(range(offset[0], height, stride)) and cols == list(range(offset[1], width, stride)):
        return x[:, offset[0]::stride, offset[1]::stride]     # a strided view: no copy here
    rows_t = torch.tensor(rows, device=x.device)
    cols_t = torch.tensor(cols, device=x.device)
    return x.index_select(1, rows_t).index_select(2, cols_t)


def upsample_nearest(y: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """[B, h, w, C] -> [B, H, W, C]: every position of block (i, j) gets y[:, i, j]."""
    batch, h, w, c = y.shape
    out = y[:, :, None, :, None, :].expand(batch, h, stride, w, stride, c)
    out = out.reshape(batch, h * stride, w * stride, c)
    if h * stride != height or w * stride != width:
        out = out[:, :height, :width]
    return out


def _parse_offset(v: Any) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if not isinstance(v, (tuple, list)) or len(v) != 2 or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v):
        raise ValueError("give (row, col) offsets inside the block, two ints >= 0")
    return (int(v[0]), int(v[1]))


@register_method("quartermap")
class QuarterMap(Reducer):
    """Scan one position of every 2x2 block, restore by nearest-neighbour upsampling."""

    kinds = frozenset({"grid"})
    params = {
        "stride": Int(2, "block size: keep one of stride x stride positions (2: a quarter)",
                      min=2),
        "offset": Param((0, 0), "(row, col) of the kept position inside each block",
                        "an int or a (row, col) pair of ints in [0, stride)", _parse_offset),
        "mode": Choice("pick", "pick: keep the position at offset; avg: the block's mean",
                       ("pick", "avg")),
    }
    default_where_doc = "stage 0 (tokenred.sites.DEFAULT_GRID_WHERE; why: README, \"Grid sites\")"

    def check_params(self) -> None:
        stride, offset = self.params["stride"], self.params["offset"]
        if max(offset) >= stride:
            raise ParameterError(f"quartermap: offset {offset} must lie inside the {stride}x{stride} "
                                 f"block (each entry in [0, {stride - 1}])")
        if self.params["mode"] == "avg" and offset != (0, 0):
            raise ParameterError("quartermap: offset only applies to mode='pick'")

    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        return default_grid_sites(sites)

    def reduce_grid(self, x: torch.Tensor, ctx: GridContext) -> ReducedGrid:
        stride = self.params["stride"]
        height, width = int(x.shape[1]), int(x.shape[2])
        small = subsample_grid(x, stride, self.params["offset"], self.params["mode"])
        return ReducedGrid(small, lambda y: upsample_nearest(y, stride, height, width), copies=True)
