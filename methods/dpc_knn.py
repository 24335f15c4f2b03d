"""``dpc_knn``: merge tokens into K clusters found by density-peak clustering with k nearest
neighbours (DPC-KNN, from TCFormer; the equal-weight TokenReduction variant of Haurum et al.).

At the **input** of each selected block (before norm1), on the non-prefix tokens:

* K = int(P · keep^(j+1)) for the j-th selected block (cumulative keep rate, P patches);
* D = cdist(x, x) / sqrt(C);
* density ρ_i = exp(−mean of D² over the k nearest tokens, i itself included) (the official code
  adds U[0,1)·1e-6 noise to break ties; it changes no decision on the fixture and is omitted);
* δ_i = the distance to the nearest denser token (the densest: the image's largest distance);
* centres = the K largest δ·ρ in descending order (that order is the cluster index); every token
  joins its nearest centre (first on ties), each centre its own cluster;
* output [prefix, the plain mean of each cluster: Σ x_t / (n_k + 1e-6)] — the official average
  is over tokens, not sizes; sizes and sources record what each cluster holds and do not enter
  attention.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from tokenred import Reducer, register_method
from tokenred.match import Rate
from tokenred.merging import clustered
from tokenred.params import Float, Int
from tokenred.sites import (SequenceContext, SequenceTokens, Site, cumulative_keep_count,
                            scaled_sequence_sites)


def density_peaks(dist: torch.Tensor, k: int, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres [B, K] in descending δ·ρ order, assignment [B, N]) for distances [B, N, N]."""
    batch, n, _ = dist.shape
    nearest = dist.topk(min(k, n), dim=-1, largest=False).values
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    denser = density[:, None, :] > density[:, :, None]                     # [B, i, j]: ρ_j > ρ_i
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(denser, dist, dist_max).min(dim=-1).values
    centres = (delta * density).topk(clusters, dim=-1).indices
    to_centres = dist.gather(1, centres[..., None].expand(-1, -1, n))     # [B, K, N]
    assignment = to_centres.argmin(dim=1)
    rows = torch.arange(batch, device=dist.device)[:, None]
    assignment[rows, centres] = torch.arange(clusters, device=dist.device)
    return centres, assignment


@register_method("dpc_knn")
class DPCKNN(Reducer):
    """Merge tokens into K density-peak clusters (DPC-KNN), averaging each cluster."""

    kinds = frozenset({"sequence"})
    sequence_placement = "block_input"
    params = {
        "keep": Float(0.7, "cumulative keep rate: the j-th selected block keeps "
                           "int(patches * keep^(j+1)) tokens", min=0.0, max=1.0, min_open=True),
        "k": Int(5, "neighbours in the density estimate (the official default 5)", min=1),
    }
    rate = Rate("keep", 0.05, 1.0, share=True)
    default_where_doc = ("blocks 3, 6, 9 of 12 (TokenReduction's reduction_loc 4/7/10) scaled to "
                         "the depth: floor(l * depth / 12)")

    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        return scaled_sequence_sites(sites, self.kinds)

    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        P = ctx.num_prefix_tokens
        x = tokens.x[:, P:]
        batch, n, c = x.shape
        clusters = cumulative_keep_count(ctx.num_patches or n, self.params["keep"], ctx.index)
        if clusters >= n or clusters < 1:
            return tokens
        dist = torch.cdist(x, x) / math.sqrt(c)
        _, assignment = density_peaks(dist, self.params["k"], clusters)
        into = assignment[..., None]
        count = x.new_zeros(batch, clusters, 1).scatter_add(1, into, x.new_ones(batch, n, 1))
        merged = x.new_zeros(batch, clusters, c).scatter_add(1, into.expand(-1, -1, c), x)
        return clustered(tokens, P, merged / (count + 1e-6), assignment)
