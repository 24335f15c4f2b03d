"""``random_drop``: drop a random subset of tokens — the control every pruning method must beat.

At each selected site, a fixed share (``keep``) or a fixed number (``r``) of the unprotected tokens
is dropped, chosen uniformly at random and independently per image. The kept tokens stay in their
original order; prefix tokens are never dropped; at least one unprotected token is always kept.
The generator is re-seeded with ``seed`` at the start of every forward, so a given batch position
sees the same drops in every run, on every device (the noise is drawn on the CPU).

On ``grid`` sites (VMamba's SS2D) the kept positions are scanned in their spatial order (the
backbone orders them row- and column-major) and the full map is restored after the scan. How a
dropped position is filled is the ``fill`` parameter: ``copy`` (default) gives it the output of the
closest kept position before it in row-major order (the first kept position for those before
it), i.e. the state the row-major scan had carried to it — a copy, like QuarterMap's upsampling;
``zero`` leaves zeros (the layers after the scan then see an empty token). The default share kept
on grids is 0.25, QuarterMap's quarter, so the default comparison is at one token budget.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from tokenred import Reducer, register_method
from tokenred.match import Rate
from tokenred.params import Choice, Float, Int, ParameterError
from tokenred.sites import (GridContext, ReducedGrid, SequenceContext, SequenceTokens, Site,
                            default_grid_sites, take_tokens)

DEFAULT_KEEP = 0.7          # sequence sites (EViT's keep rate)
DEFAULT_GRID_KEEP = 0.25    # grid sites (QuarterMap's quarter)


def random_keep_indices(batch: int, n: int, keep: int, generator: torch.Generator,
                        device: torch.device) -> torch.Tensor:
    """[batch, keep] sorted indices into n tokens, uniformly at random per row."""
    noise = torch.rand(batch, n, generator=generator)
    idx = noise.argsort(dim=1)[:, :keep].sort(dim=1).values
    return idx.to(device)


def fill_index(kept: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] index into the kept tokens for every position: the kept token itself, else the
    closest kept one before it in flat order (the first kept token before any is reached).
    ``kept``: [B, k] sorted flat positions."""
    batch, k = kept.shape
    marker = torch.full((batch, n), -1, dtype=torch.long, device=kept.device)
    marker.scatter_(1, kept, torch.arange(k, device=kept.device).expand(batch, -1))
    return marker.cummax(dim=1).values.clamp_min(0)


@register_method("random_drop")
class RandomDrop(Reducer):
    """Drop a random share (keep) or number (r) of tokens at each selected block; seeded."""

    kinds = frozenset({"sequence", "grid"})
    params = {
        "keep": Float(None, f"share of unprotected tokens kept at each selected site (default "
                            f"{DEFAULT_KEEP} on sequence sites, {DEFAULT_GRID_KEEP} on grid sites, "
                            f"when r is not given)",
                      min=0.0, max=1.0, min_open=True, optional=True),
        "r": Int(None, "[sequence] number of tokens dropped at each selected site (instead of keep)",
                 min=0, optional=True),
        "seed": Int(0, "seed of the generator, re-seeded at every forward", min=0),
        "fill": Choice("copy", "[grid] what a dropped position gets after the scan: copy (the "
                               "closest kept position before it, row-major) or zero", ("copy", "zero")),
    }
    rate = Rate("keep", 0.01, 1.0, share=True)
    default_where_doc = ("sequence: blocks depth//4, depth//2 and 3·depth//4 (3, 6, 9 of 12: the "
                         "EViT / DynamicViT reduction locations); grid: "
                         "tokenred.sites.DEFAULT_GRID_WHERE (stage 0, the 56x56 maps at 224)")

    def check_params(self) -> None:
        if self.params["keep"] is not None and self.params["r"] is not None:
            raise ParameterError("random_drop: give either keep or r, not both")
        self._generator = torch.Generator()

    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        if any(s.kind == "grid" for s in sites):
            return default_grid_sites(sites)
        sites = [s for s in sites if s.kind in self.kinds]
        depth = len(sites)
        chosen = sorted({depth // 4, depth // 2, (3 * depth) // 4})
        return [sites[i] for i in chosen]

    def prepare(self, sites: Sequence[Site]) -> None:
        if self.params["r"] is not None and any(s.kind == "grid" for s in sites):
            raise ParameterError("random_drop: r (tokens dropped per block) applies to sequence "
                                 "sites; a grid's size changes per stage, give keep instead")

    def begin_forward(self) -> None:
        self._generator.manual_seed(self.params["seed"])

    def kept_count(self, n: int, grid: bool = False) -> int:
        if self.params["r"] is not None:
            kept = n - self.params["r"]
        else:
            keep = self.params["keep"]
            if keep is None:
                keep = DEFAULT_GRID_KEEP if grid else DEFAULT_KEEP
            kept = round(keep * n)
        return max(1, min(n, kept))

    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        B, T = int(tokens.x.shape[0]), int(tokens.x.shape[1])  # plain ints also under jit tracing
        P = ctx.num_prefix_tokens
        n = T - P
        keep = self.kept_count(n)
        if keep >= n:
            return tokens
        idx = random_keep_indices(B, n, keep, self._generator, tokens.x.device) + P
        prefix = torch.arange(P, device=idx.device).expand(B, P)
        idx = torch.cat([prefix, idx], dim=1)
        return tokens.take(idx)

    def reduce_grid(self, x: torch.Tensor, ctx: GridContext) -> Any:
        batch, height, width, c = (int(d) for d in x.shape)
        n = height * width
        keep = self.kept_count(n, grid=True)
        if keep >= n:
            return x
        kept = random_keep_indices(batch, n, keep, self._generator, x.device)  # row-major sorted
        tokens = take_tokens(x.reshape(batch, n, c), kept)
        positions = torch.stack([kept // width, kept % width], dim=-1)
        if self.params["fill"] == "copy":
            index = fill_index(kept, n)

            def restore(y: torch.Tensor) -> torch.Tensor:
                return take_tokens(y, index).view(batch, height, width, y.shape[-1])

            return ReducedGrid(tokens, restore, positions=positions, copies=True)

        def restore_zero(y: torch.Tensor) -> torch.Tensor:
            out = y.new_zeros(batch, n, y.shape[-1])
            out.scatter_(1, kept[..., None].expand(-1, -1, y.shape[-1]), y)
            return out.view(batch, height, width, y.shape[-1])

        return ReducedGrid(tokens, restore_zero, positions=positions)
