"""Token-merging arithmetic shared by sequence methods: size-weighted merges of chosen tokens
into chosen destinations, with size and source bookkeeping. Pure functions on tensors."""
from __future__ import annotations

import torch

from .sites import SequenceTokens, take_per_token, take_tokens


def with_prefix(prefix: int, index: torch.Tensor) -> torch.Tensor:
    """[B, K] indices into the non-prefix tokens -> [B, prefix + K] indices into all tokens, the
    prefix tokens first in their own order."""
    batch = index.shape[0]
    head = torch.arange(prefix, device=index.device).expand(batch, prefix)
    return torch.cat([head, index + prefix], dim=1)


def merge_weighted(tokens: SequenceTokens, keep: torch.Tensor, merged: torch.Tensor,
                   into: torch.Tensor) -> SequenceTokens:
    """Keep the tokens ``keep`` [B, K] (indices into all tokens, in output order) and average
    the tokens ``merged`` [B, M] into the kept positions ``into`` [B, M] (indices into ``keep``),
    weighting every token by its size (ToMe's ``x_d <- (s_d x_d + Σ s_m x_m) / (s_d + Σ s_m)``);
    sizes add up, sources are united."""
    x, size = tokens.x, tokens.size
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    weighted = x * size
    out = take_tokens(weighted, keep)
    out_size = take_tokens(size, keep)
    dst = into[..., None]
    out = out.scatter_reduce(1, dst.expand(-1, -1, x.shape[-1]), take_tokens(weighted, merged),
                             reduce="sum")
    out_size = out_size.scatter_reduce(1, dst, take_tokens(size, merged), reduce="sum")
    source = None
    if tokens.source is not None:
        source = take_tokens(tokens.source, keep).scatter_reduce(
            1, dst.expand(-1, -1, tokens.source.shape[-1]), take_tokens(tokens.source, merged),
            reduce="amax")
    # (order-sensitive backbones) a kept token stays where it was; merged ones join it there
    return SequenceTokens(out / out_size, out_size, source,
                          positions=take_per_token(tokens.positions, keep))


def clustered(tokens: SequenceTokens, prefix: int, x_clusters: torch.Tensor,
              assignment: torch.Tensor) -> SequenceTokens:
    """[prefix, one token per cluster]: ``x_clusters`` [B, K, C] (however the method forms them:
    medoids, means), each cluster's total size and the union of its members' sources.
    ``assignment`` [B, N]: the cluster of every non-prefix token."""
    x, size = tokens.x, tokens.size
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    batch, clusters = x_clusters.shape[:2]
    into = assignment[..., None]
    cluster_size = size.new_zeros(batch, clusters, 1).scatter_add(1, into, size[:, prefix:])
    source = None
    if tokens.source is not None:
        src = tokens.source
        members = src.new_zeros(batch, clusters, src.shape[-1]).scatter_reduce(
            1, into.expand(-1, -1, src.shape[-1]), src[:, prefix:], reduce="amax")
        source = torch.cat([src[:, :prefix], members], dim=1)
    positions = None
    if tokens.positions is not None:   # a cluster sits at the first patch it holds
        pos = tokens.positions
        first = pos.new_full((batch, clusters), torch.iinfo(pos.dtype).max).scatter_reduce(
            1, assignment, pos[:, prefix:], reduce="amin")
        positions = torch.cat([pos[:, :prefix], first], dim=1)
    return SequenceTokens(torch.cat([x[:, :prefix], x_clusters], dim=1),
                          torch.cat([size[:, :prefix], cluster_size], dim=1), source,
                          positions=positions)


def cosine_matrix(metric: torch.Tensor) -> torch.Tensor:
    """[B, T, c] -> [B, T, T] cosine similarities (self-similarity 1)."""
    m = metric / metric.norm(dim=-1, keepdim=True)
    return m @ m.transpose(-1, -2)

