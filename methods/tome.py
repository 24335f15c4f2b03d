"""``tome``: Token Merging (Bolya et al., ICLR 2023), reimplemented from the published algorithm.

Bipartite soft matching on the attention keys averaged over heads: tokens are split alternately
into sets A (even positions) and B (odd positions), each A token is linked to its most similar B
token (cosine similarity), and the r most similar A tokens are merged into their B partners by a
size-weighted average. Prefix tokens (class, distillation, registers) are never merged: an
A-side prefix token never becomes a source and a B-side one never a destination. The output keeps
the prefix tokens first in their original order, then the unmerged A tokens, then B — the order
of the official implementation, which we reproduce exactly (source maps included).

On ``grid`` sites (VMamba's SS2D) the map must come back whole, so tokens are merged for the
scan only and unmerged after it, as ToMe for Stable Diffusion (Bolya & Hoffman, 2023) does around
attention: one destination per ``sy`` x ``sx`` cell of a stride grid (random inside the cell,
seeded, or its top-left position), every other position a source; each source is linked to its
most similar destination (cosine of the map's channels) and the ``ratio`` share of all positions
with the most similar links is averaged into their destinations. The remaining tokens are scanned
in spatial order (the backbone orders them row- and column-major), and unmerging copies each
destination's output back to the sources merged into it.

The matching functions below are pure functions on tensors, usable without any model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from tokenred import Reducer, register_method
from tokenred.match import Rate
from tokenred.params import Bool, Float, Int, Param, ParameterError
from tokenred.sites import (GridContext, ReducedGrid, SequenceContext, SequenceTokens, Site,
                            default_grid_sites, take_tokens)

MergeFn = Callable[..., torch.Tensor]


def _identity(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    return x


def bipartite_soft_matching(metric: torch.Tensor, r: int, num_protected: int = 0
                            ) -> tuple[MergeFn, MergeFn]:
    """Match ``r`` tokens of ``metric`` [B, T, c] and return ``(merge, unmerge)``.

    ``num_protected`` leading tokens are never merged. ``r`` is capped at half of the unprotected
    tokens. ``merge(x, mode)`` maps [B, T, C] to [B, T - r, C] (mode: "mean", "sum", "amax");
    ``unmerge(y)`` maps back to [B, T, C], copying each destination's value to its sources.
    """
    T = metric.shape[1]
    r = min(r, (T - num_protected) // 2)
    if r <= 0:
        return _identity, _identity
    prot_a = (num_protected + 1) // 2  # protected tokens at even positions (set A)
    prot_b = num_protected // 2        # protected tokens at odd positions (set B)

    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        if prot_a:
            scores[..., :prot_a, :] = -math.inf
        if prot_b:
            scores[..., :, :prot_b] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]   # A tokens that stay
        src_idx = edge_idx[..., :r, :]   # A tokens merged away
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
        if num_protected:
            # protected A tokens have -inf rows, so they are always among the kept ones; sorting
            # puts them back in front in their original order
            unm_idx = unm_idx.sort(dim=1)[0]

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        if not num_protected:
            return torch.cat([unm, dst], dim=1)
        # prefix tokens alternate between A and B in the original sequence
        prefix = [unm[:, i // 2, None] if i % 2 == 0 else dst[:, i // 2, None]
                  for i in range(num_protected)]
        return torch.cat(prefix + [unm[:, prot_a:], dst[:, prot_b:]], dim=1)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        n, _, c = y.shape
        t1 = unm_idx.shape[1] + r
        if num_protected:
            pre = y[:, :num_protected]
            rest = y[:, num_protected:]
            n_unm_rest = t1 - r - prot_a
            unm = torch.cat([pre[:, 0::2], rest[:, :n_unm_rest]], dim=1)
            dst = torch.cat([pre[:, 1::2], rest[:, n_unm_rest:]], dim=1)
        else:
            unm, dst = y[:, :t1 - r], y[:, t1 - r:]
        src = dst.gather(dim=-2, index=dst_idx.expand(n, r, c))
        out = torch.zeros(n, T, c, device=y.device, dtype=y.dtype)
        out[..., 1::2, :] = dst
        out.scatter_(dim=-2, index=(2 * unm_idx).expand(n, t1 - r, c), src=unm)
        out.scatter_(dim=-2, index=(2 * src_idx).expand(n, r, c), src=src)
        return out

    return merge, unmerge


@dataclass
class GridMerge:
    """A merge of a flattened H x W map for one scan: ``merge`` [B, N, C] -> [B, T, C] (kept
    tokens: unmerged sources, then destinations), ``positions`` [B, T, 2] their (row, col), and
    ``unmerge`` [B, T, C'] -> [B, N, C'] (every position gets its own or its destination's
    value)."""

    merge: Callable[[torch.Tensor], torch.Tensor]
    unmerge: Callable[[torch.Tensor], torch.Tensor]
    positions: torch.Tensor


def stride_grid_destinations(height: int, width: int, sy: int, sx: int,
                             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Flat indices (row-major) of one destination per full ``sy`` x ``sx`` cell: a uniformly
    random position of the cell (drawn on the CPU from ``generator``), or its top-left one when
    ``generator`` is None. Rows/columns left over by a partial cell hold no destination."""
    cells_y, cells_x = height // sy, width // sx
    if generator is None:
        pick = torch.zeros(cells_y, cells_x, dtype=torch.long)
    else:
        pick = torch.randint(sy * sx, (cells_y, cells_x), generator=generator)
    rows = torch.arange(cells_y)[:, None] * sy + pick // sx
    cols = torch.arange(cells_x)[None, :] * sx + pick % sx
    return (rows * width + cols).flatten()


def stride_grid_matching(metric: torch.Tensor, height: int, width: int, r: int, sy: int = 2,
                         sx: int = 2, generator: Optional[torch.Generator] = None) -> GridMerge:
    """Merge ``r`` of the sources of a ``height`` x ``width`` map (``metric`` [B, N, c],
    row-major) into their most similar stride-grid destination (plain mean; every token stands
    for one position). ``r`` is capped at the number of sources."""
    batch, n, _ = metric.shape
    device = metric.device
    dst = stride_grid_destinations(height, width, sy, sx, generator).to(device)
    is_dst = torch.zeros(n, dtype=torch.bool, device=device)
    is_dst[dst] = True
    src = (~is_dst).nonzero().flatten()
    n_src, n_dst = int(src.numel()), int(dst.numel())
    r = max(0, min(r, n_src))
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores = unit.index_select(1, src) @ unit.index_select(1, dst).transpose(1, 2)
        node_max, node_idx = scores.max(dim=-1)                  # best destination per source
        edge_idx = node_max.argsort(dim=-1, descending=True)
        unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]      # sources kept / merged away
        dst_idx = node_idx.gather(1, src_idx)                    # their destinations
        # the full map's position -> index among the kept tokens [unmerged sources | destinations]
        kept = n_src - r
        restore_idx = torch.empty(batch, n, dtype=torch.long, device=device)
        restore_idx[:, dst] = torch.arange(kept, kept + n_dst, device=device)
        restore_idx.scatter_(1, src[unm_idx], torch.arange(kept, device=device).expand(batch, -1))
        restore_idx.scatter_(1, src[src_idx], kept + dst_idx)
        flat = torch.cat([src[unm_idx], dst.expand(batch, -1)], dim=1)
        positions = torch.stack([flat // width, flat % width], dim=-1)

    def merge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        sources, dests = x.index_select(1, src), x.index_select(1, dst)
        unm, moved = take_tokens(sources, unm_idx), take_tokens(sources, src_idx)
        dests = dests.scatter_reduce(1, dst_idx[..., None].expand(-1, -1, c), moved, reduce="mean")
        return torch.cat([unm, dests], dim=1)

    def unmerge(y: torch.Tensor) -> torch.Tensor:
        return take_tokens(y, restore_idx)

    return GridMerge(merge, unmerge, positions)


def merge_wavg(merge: MergeFn, x: torch.Tensor, size: Optional[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average: each merged token is Σ sᵢxᵢ / Σ sᵢ; sizes add up."""
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def merge_source(merge: MergeFn, source: torch.Tensor) -> torch.Tensor:
    """Update the [B, T, T0] 0/1 membership of original tokens."""
    return merge(source, mode="amax")


def parse_r(num_layers: int, r: Any) -> list[int]:
    """ToMe's schedule: an int (constant), ``(r, inflection)`` with inflection in [-1, 1]
    (linear from r·(1-inflection) to r·(1+inflection); (r, -1) is the paper's decreasing
    schedule), or an explicit list (padded with zeros when shorter than the number of layers)."""
    if isinstance(r, list):
        if len(r) > num_layers:
            raise ParameterError(f"tome: r has {len(r)} entries but only {num_layers} site(s) are "
                                 f"selected")
        return list(r) + [0] * (num_layers - len(r))
    inflection = 0.0
    if isinstance(r, tuple):
        r, inflection = r
    low = int(r * (1.0 - inflection))
    high = 2 * r - low
    step = (high - low) / (num_layers - 1) if num_layers > 1 else 0.0
    return [int(low + step * i) for i in range(num_layers)]


def _parse_r_param(v: Any) -> Any:
    def nonneg_int(x: Any) -> int:
        if isinstance(x, bool) or not isinstance(x, int) or x < 0:
            raise ValueError("r values must be integers >= 0")
        return x

    if isinstance(v, list):
        return [nonneg_int(x) for x in v]
    if isinstance(v, tuple):
        if len(v) != 2:
            raise ValueError("a tuple is (r, inflection)")
        inflection = v[1]
        if isinstance(inflection, bool) or not isinstance(inflection, (int, float)) \
                or not -1.0 <= inflection <= 1.0:
            raise ValueError("inflection must be a number in [-1, 1]")
        return (nonneg_int(v[0]), float(inflection))
    return nonneg_int(v)


GRID_DEFAULT_RATIO = 0.75


@register_method("tome")
class ToMe(Reducer):
    """Token Merging: bipartite soft matching (sequences); merge -> scan -> unmerge (grids).

    Sequence sites: merge between attention and MLP, size-weighted. Grid sites: stride-grid
    destinations, the scan on the merged tokens, unmerge by copying."""

    kinds = frozenset({"sequence", "grid"})
    params = {
        "r": Param(13, "[sequence] tokens merged per selected block (DeiT-S/ViT-S paper setting: 13)",
                   "an int >= 0, an (r, inflection) tuple with inflection in [-1, 1], or a list of "
                   "ints >= 0 (one per selected block)", _parse_r_param),
        "prop_attn": Bool(True, "[sequence] add log(size) to the attention logits (proportional "
                                "attention)"),
        "trace_source": Bool(False, "[sequence] track which original tokens each token holds "
                                    "(handle.state.source; for visualisation)"),
        "ratio": Float(GRID_DEFAULT_RATIO,
                       "[grid] share of a map's positions merged at each selected site (default "
                       "0.75: the quarter QuarterMap keeps; ToMe for SD uses 0.5); at most "
                       "1 - 1/(sx*sy)", min=0.0, max=1.0, max_open=True),
        "sx": Int(2, "[grid] stride-grid cell width: one destination per sy x sx cell", min=1),
        "sy": Int(2, "[grid] stride-grid cell height", min=1),
        "random_dst": Bool(True, "[grid] destination at a random position of each cell (seeded); "
                                 "false: the cell's top-left position"),
        "seed": Int(0, "[grid] seed of the destination draw, re-seeded at every forward", min=0),
    }
    rate = Rate("r", 0, 128, integer=True, fewer="high")
    default_where_doc = ("sequence: every block (as in the official ToMe); grid: "
                         "tokenred.sites.DEFAULT_GRID_WHERE (stage 0, the 56x56 maps at 224)")

    def check_params(self) -> None:
        self.proportional_attention = self.params["prop_attn"]
        self.trace_source = self.params["trace_source"]
        self.schedule: list[int] = []
        cells = self.params["sx"] * self.params["sy"]
        if cells < 2:
            raise ParameterError("tome: a 1x1 stride grid makes every position a destination; "
                                 "give sx * sy >= 2")
        cap = 1.0 - 1.0 / cells
        if self.params["ratio"] > cap + 1e-9:
            # reported, not silently capped: only sources can merge, and a cell has one destination
            raise ParameterError(f"tome: ratio={self.params['ratio']} exceeds 1 - 1/(sx*sy) = "
                                 f"{cap:g} for {self.params['sy']}x{self.params['sx']} cells")
        self._generator = torch.Generator()

    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        if any(s.kind == "grid" for s in sites):
            return default_grid_sites(sites)
        return super().default_sites(sites)

    def prepare(self, sites: Sequence[Site]) -> None:
        self.schedule = parse_r(len(sites), self.params["r"])

    def begin_forward(self) -> None:
        self._generator.manual_seed(self.params["seed"])

    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        r = self.schedule[ctx.index]
        if r <= 0:
            return tokens
        merge, _ = bipartite_soft_matching(ctx.metric, r, ctx.num_prefix_tokens)
        source = merge_source(merge, tokens.source) if tokens.source is not None else None
        x, size = merge_wavg(merge, tokens.x, tokens.size)
        # (order-sensitive backbones) a merged token sits at the first patch it holds
        positions = (None if tokens.positions is None
                     else merge(tokens.positions[..., None], mode="amin")[..., 0])
        return SequenceTokens(x, size, source, positions=positions)

    def reduce_grid(self, x: torch.Tensor, ctx: GridContext) -> Any:
        batch, height, width, c = (int(d) for d in x.shape)
        r = int(height * width * self.params["ratio"])
        if r <= 0:
            return x
        flat = x.reshape(batch, height * width, c)
        generator = self._generator if self.params["random_dst"] else None
        m = stride_grid_matching(flat, height, width, r, self.params["sy"], self.params["sx"],
                                 generator)

        def restore(y: torch.Tensor) -> torch.Tensor:
            return m.unmerge(y).view(batch, height, width, y.shape[-1])

        return ReducedGrid(m.merge(flat), restore, positions=m.positions, copies=True)
