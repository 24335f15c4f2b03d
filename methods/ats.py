"""``ats``: Adaptive Token Sampling (Fayyaz et al., ECCV 2022), training-free, per image.

At each selected block, after the attention residual and before the MLP (the official ATS block
keeps only the sampled rows of the attention output and the residual, which is the same):

* significance of every non-prefix token j: the class token's attention to it summed over heads
  (``ctx.cls_attention``) times the norm of its value vector (all heads concatenated,
  ``ctx.values``), normalised to sum 1, sorted ascending;
* inverse-transform sampling: the cumulative sum c, normalised as (c − c₀)/(c_last − c₀); K sample
  points y_i = y₀ + i·(1 − y₀)/(K − 1) from the smallest non-zero normalised value y₀ to 1, K =
  the number of patches entering the network (the official n_ref − 1, fixed for every block);
  each y takes the nearest position (first on ties); duplicates count once; so the lowest-scored
  token is never sampled;
* output [prefix, sampled tokens in ascending score order]; the count differs per image.

Per image, as if each image ran alone: a batch is padded at the end to its largest count, the
padding marked in ``SequenceTokens.mask`` (the backbone hides it from later attention and from
pooling), and every later sampling uses only that image's real tokens. The official batched code
couples images (padding changes an image's cdf and its eps-softmax); tokenred reproduces its
single-image results. Softmax is the plain one (the official eps-softmax differs by < 1e-6).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from tokenred import Reducer, register_method
from tokenred.merging import with_prefix
from tokenred.match import Rate
from tokenred.params import Int
from tokenred.sites import SequenceContext, SequenceTokens, Site, SiteQuantityError, take_tokens


def sample_positions(score: torch.Tensor, valid: torch.Tensor, samples: int) -> torch.Tensor:
    """ATS's inverse-transform sampling, per image. score [B, n] (>= 0, invalid ignored), valid
    [B, n] bool. Returns chosen [B, n] bool over the ascending-score order positions, and the
    order itself: (order [B, n] token indices ascending by score, invalid first; chosen)."""
    score = torch.where(valid, score, torch.zeros_like(score))
    score = score / score.sum(dim=-1, keepdim=True)
    key = torch.where(valid, score, torch.full_like(score, -1.0))      # invalid sort first
    sorted_key, order = key.sort(dim=-1, stable=True)
    sorted_valid = sorted_key >= 0
    c = torch.where(sorted_valid, sorted_key, torch.zeros_like(sorted_key)).cumsum(dim=-1)
    first = (~sorted_valid).sum(dim=-1, keepdim=True)                  # first real position
    c0 = c.gather(1, first.clamp(max=c.shape[1] - 1))
    cdf = (c - c0) / (c[:, -1:] - c0)
    cdf = torch.where(sorted_valid, cdf, torch.full_like(cdf, math.inf))
    y0 = torch.where(cdf > 0, cdf, torch.full_like(cdf, math.inf)).min(dim=-1, keepdim=True).values
    steps = torch.arange(samples, dtype=cdf.dtype, device=cdf.device) / max(samples - 1, 1)
    ys = y0 + steps * (1 - y0)                                          # [B, K]
    nearest = (cdf[:, None, :] - ys[:, :, None]).abs().argmin(dim=-1)   # [B, K], first on ties
    chosen = torch.zeros_like(sorted_valid).scatter(
        1, nearest, torch.ones_like(nearest, dtype=torch.bool)) & sorted_valid
    return order, chosen


@register_method("ats")
class ATS(Reducer):
    """Adaptive Token Sampling: per-image inverse-transform sampling of class-attention x value
    norm; the number of tokens kept adapts to each image."""

    kinds = frozenset({"sequence"})
    requires = frozenset({"cls_attention", "values"})
    params = {
        "samples": Int(None, "sample points K per block (default: the number of patches, the "
                             "official n_ref - 1); fewer samples keep fewer tokens",
                       min=2, optional=True),
    }
    rate = Rate("samples", 2, 1024, integer=True)
    default_where_doc = ("every block from ceil(depth/4) on (the official DeiT-S config: blocks "
                         "3..11 of 12)")

    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        sites = [s for s in sites if s.kind in self.kinds]
        start = math.ceil(len(sites) / 4)
        return sites[start:]

    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        if not ctx.class_token:
            raise SiteQuantityError("ats samples by the class token's attention; this ViT has no "
                                    "class token")
        P = ctx.num_prefix_tokens
        x = tokens.x
        batch, n = x.shape[0], x.shape[1] - P
        valid = (tokens.mask[:, P:] if tokens.mask is not None
                 else torch.ones(batch, n, dtype=torch.bool, device=x.device))
        attention = ctx.cls_attention.sum(dim=1)[:, P:]                     # [B, n]
        significance = attention * ctx.values[:, P:].norm(dim=-1)
        samples = self.params["samples"] or ctx.num_patches or n
        order, chosen = sample_positions(significance, valid, samples)
        counts = chosen.sum(dim=-1)
        width = int(counts.max())
        # chosen positions first, in ascending score order; the rest become padding
        rank = torch.where(chosen, torch.arange(n, device=x.device).expand(batch, n), n + 1)
        picked = rank.sort(dim=-1, stable=True).indices[:, :width]
        local = order.gather(1, picked)
        keep = with_prefix(P, local)
        real = torch.arange(width, device=x.device)[None, :] < counts[:, None]
        mask = torch.cat([torch.ones(batch, P, dtype=torch.bool, device=x.device), real], dim=1)
        out_x = take_tokens(x, keep) * mask[..., None].to(x.dtype)
        size = None if tokens.size is None else take_tokens(tokens.size, keep) * mask[..., None]
        source = None if tokens.source is None else take_tokens(tokens.source, keep) * mask[..., None]
        return SequenceTokens(out_x, size, source, None if bool(mask.all()) else mask)
