"""``kmedoids`` / ``kmedoids_weighted``: keep K medoid tokens (the K-Medoids reduction of Haurum
et al., "Which Tokens to Use?", ICCV-W 2023), as their TokenReduction code runs it.

At the **input** of each selected block (before norm1), on the non-prefix tokens:

* K = int(P · keep^(j+1)) for the j-th selected block (P: patches entering the network — the
  keep rate is cumulative);
* D = torch.cdist(x, x) (Euclidean);
* initial centres — equal weights: a first centre (``first_centers``, or drawn from ``seed``: the
  official code draws it from numpy's global RNG, one index for the whole batch), then repeatedly
  the token whose *largest* distance to the chosen centres is largest (chosen tokens count 0: the
  official max-max rule, not farthest-point max-min); weighted: the K tokens that received the
  most attention in the previous block (summed over heads and queries, ``ctx.received_attention``),
  in descending order;
* ``iters`` rounds of: assign every token to its nearest centre, then make each cluster's centre
  the member minimising w_i · Σ_j D_ij (over all tokens j; w = 1 with equal weights, else the
  attention weights); then a final assignment;
* output [prefix, the medoid tokens themselves (copied, not averaged) in cluster order]. Sizes
  and sources record each cluster's members (for visualization and size-weighted pooling); they
  do not enter attention, as in the official code.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from tokenred import Reducer, register_method
from tokenred.merging import clustered
from tokenred.match import Rate
from tokenred.params import Float, Int, Param, ParameterError
from tokenred.sites import (SequenceContext, SequenceTokens, Site, scaled_sequence_sites,
                            cumulative_keep_count, take_tokens)


def max_max_init(dist: torch.Tensor, first: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] centres: ``first`` [B], then each time the token whose largest distance to any
    chosen centre is largest (chosen tokens count 0)."""
    batch = dist.shape[0]
    rows = torch.arange(batch, device=dist.device)
    centres = [first]
    farthest = dist[rows, first].clone()                     # [B, N]: max distance to a centre
    farthest[rows, first] = 0.0
    for _ in range(1, k):
        nxt = farthest.argmax(dim=-1)
        centres.append(nxt)
        farthest = torch.maximum(farthest, dist[rows, nxt])
        for c in centres:
            farthest[rows, c] = 0.0
    return torch.stack(centres, dim=1)


def assign(dist: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[B, N] index of every token's nearest centre (first on ties)."""
    to_centres = dist.gather(2, centres[:, None, :].expand(-1, dist.shape[1], -1))   # [B, N, K]
    return to_centres.argmin(dim=-1)


def update_medoids(dist: torch.Tensor, assignment: torch.Tensor, centres: torch.Tensor,
                   weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Each cluster's new centre: the member with the least w_i · Σ_j D_ij; an empty cluster
    keeps its centre."""
    cost = dist.sum(dim=-1)                                  # [B, N]
    if weight is not None:
        cost = cost * weight
    k = centres.shape[1]
    member = assignment[:, None, :] == torch.arange(k, device=dist.device)[None, :, None]
    masked = cost[:, None, :].expand(-1, k, -1).masked_fill(~member, float("inf"))
    best = masked.argmin(dim=-1)
    return torch.where(member.any(dim=-1), best, centres)


def _first_centers(value: Any) -> Optional[list]:
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError("first_centers must be ints >= 0 (one per selected block, or one for all)")
    return list(values)


@register_method("kmedoids")
class KMedoids(Reducer):
    """Keep K medoid tokens per block (equal weights, max-max initialisation)."""

    kinds = frozenset({"sequence"})
    sequence_placement = "block_input"
    params = {
        "keep": Float(0.7, "cumulative keep rate: the j-th selected block keeps "
                           "int(patches * keep^(j+1)) tokens", min=0.0, max=1.0, min_open=True),
        "iters": Int(3, "medoid update rounds (the official default 3)", min=0),
        "first_centers": Param(None, "first centre (non-prefix token index) of each selected "
                                     "block, to reproduce a run; default: drawn from seed",
                               "an int or a list of ints >= 0, one per selected block",
                               _first_centers),
        "seed": Int(0, "seed of the first-centre draws, re-seeded at every forward", min=0),
    }
    rate = Rate("keep", 0.05, 1.0, share=True)
    default_where_doc = ("blocks 3, 6, 9 of 12 (TokenReduction's reduction_loc 4/7/10) scaled to "
                         "the depth: floor(l * depth / 12)")

    def check_params(self) -> None:
        self._generator = torch.Generator()

    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        return scaled_sequence_sites(sites, self.kinds)

    def prepare(self, sites: Sequence[Site]) -> None:
        first = self.params.get("first_centers")
        if first is not None and len(first) not in (1, len(sites)):
            raise ParameterError(f"{self.name}: first_centers has {len(first)} values for "
                                 f"{len(sites)} selected blocks; give one, or one per block")

    def begin_forward(self) -> None:
        if "seed" in self.params:
            self._generator.manual_seed(self.params["seed"])

    def initial_centres(self, dist: torch.Tensor, k: int, ctx: SequenceContext) -> torch.Tensor:
        batch, n = dist.shape[:2]
        first = self.params["first_centers"]
        if first is not None:
            index = first[ctx.index] if len(first) > 1 else first[0]
            if index >= n:
                raise ParameterError(f"{self.name}: first_centers {index} at {ctx.site.name} is "
                                     f"out of range for {n} tokens")
        else:   # one index for the whole batch, as the official draw
            index = int(torch.randint(n, (1,), generator=self._generator))
        start = torch.full((batch,), index, dtype=torch.long, device=dist.device)
        return max_max_init(dist, start, k)

    def token_weights(self, ctx: SequenceContext) -> Optional[torch.Tensor]:
        return None

    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        P = ctx.num_prefix_tokens
        x = tokens.x[:, P:]
        n = x.shape[1]
        k = cumulative_keep_count(ctx.num_patches or n, self.params["keep"], ctx.index)
        if k >= n or k < 1:
            return tokens
        dist = torch.cdist(x, x)
        weight = self.token_weights(ctx)
        centres = self.initial_centres(dist, k, ctx) if weight is None else \
            weight[:, P:].topk(k, dim=-1).indices
        w = None if weight is None else weight[:, P:]
        for _ in range(self.params["iters"]):
            centres = update_medoids(dist, assign(dist, centres), centres, w)
        assignment = assign(dist, centres)
        return clustered(tokens, P, take_tokens(x, centres), assignment)


@register_method("kmedoids_weighted")
class WeightedKMedoids(KMedoids):
    """K-Medoids with attention weights: the most-attended tokens start as centres, and each
    token's medoid cost is scaled by the attention it received."""

    requires = frozenset({"received_attention"})
    params = {"keep": KMedoids.params["keep"], "iters": KMedoids.params["iters"]}

    def prepare(self, sites: Sequence[Site]) -> None:
        pass

    def token_weights(self, ctx: SequenceContext) -> Optional[torch.Tensor]:
        return ctx.received_attention
