"""``evit`` and ``topk``: keep the tokens the class token attends to most (EViT, Liang et al.,
ICLR 2022), fusing the rest into one token (``evit``) or dropping them (``topk``).

At each selected block, after the attention residual and before the MLP (EViT's placement):

* score of every non-prefix token = the class token's post-softmax attention to it, averaged over
  heads (``ctx.cls_attention``: one attention row from q_cls and the keys, fused attention kept);
* keep ``k = ceil(keep · n)`` of the n non-prefix tokens (n includes an earlier fused token, as
  in the official code; k = n does nothing), in descending score order;
* ``fuse=true``: the others become one token ``Σ score_j · x_j`` — the official weighted *sum*,
  not renormalised — appended last. It is an ordinary candidate at later reductions.
* output ``[prefix, kept (descending score), fused]``.

Deviations from the official code, both only where the official code has no answer: every prefix
token (class, distillation, registers) is protected (the official code prunes a distillation
token like a patch); and token sizes are tracked (a fused token stands for the patches it sums)
so source tracking, visualization and size-weighted average pooling see what it holds — sizes do
not enter attention, as in EViT.

Default sites: EViT's ``drop_loc`` (3, 6, 9) of 12 blocks scaled to the depth,
``floor(l · depth / 12)`` (1, 3, 4 at depth 6).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from tokenred import Reducer, register_method
from tokenred.match import Rate
from tokenred.params import Bool, Float
from tokenred.sites import (SequenceContext, SequenceTokens, Site, SiteQuantityError,
                            scaled_sequence_sites, take_tokens)

def attentive_split(score: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept [B, keep] in descending score order, pruned [B, n - keep] in ascending index)."""
    kept = score.topk(keep, dim=1, largest=True, sorted=True).indices
    # (a tensor source, not a Python bool: the FLOP counter's jit trace needs it)
    is_pruned = torch.ones_like(score, dtype=torch.bool).scatter(
        1, kept, torch.zeros_like(kept, dtype=torch.bool))
    pruned = is_pruned.nonzero()[:, 1].view(score.shape[0], -1)   # row-major: ascending
    return kept, pruned


@register_method("evit")
class EViT(Reducer):
    """Keep the tokens the class token attends to most; fuse the rest into one token (EViT)."""

    kinds = frozenset({"sequence"})
    requires = frozenset({"cls_attention"})
    params = {
        "keep": Float(0.7, "share of non-class tokens kept at each reduction (EViT's keep rate; "
                           "k = ceil(keep * n))", min=0.0, max=1.0, min_open=True),
        "fuse": Bool(True, "fuse the inattentive tokens into one token (EViT); false drops them "
                           "(Top-K)"),
    }
    rate = Rate("keep", 0.01, 1.0, share=True)
    default_where_doc = ("EViT's drop_loc 3, 6, 9 of 12 blocks scaled to the depth: "
                         "floor(l * depth / 12)")

    @property
    def fuse(self) -> bool:
        return bool(self.params.get("fuse", False))

    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        return scaled_sequence_sites(sites, self.kinds)

    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        if not ctx.class_token:
            raise SiteQuantityError(f"{self.name} scores tokens by the class token's attention; "
                                    f"this ViT has no class token")
        x = tokens.x
        P = ctx.num_prefix_tokens
        n = x.shape[1] - P
        keep = math.ceil(self.params["keep"] * n)
        if keep >= n:
            return tokens
        score = ctx.cls_attention.mean(dim=1)[:, P:]          # [B, n], head mean
        kept, pruned = attentive_split(score, keep)
        size = tokens.size if tokens.size is not None else x.new_ones(x.shape[0], x.shape[1], 1)
        parts_x = [x[:, :P], take_tokens(x[:, P:], kept)]
        parts_size = [size[:, :P], take_tokens(size[:, P:], kept)]
        source = tokens.source
        parts_source = [source[:, :P], take_tokens(source[:, P:], kept)] if source is not None else None
        if self.fuse:
            weight = score.gather(1, pruned)[..., None]                        # [B, n-k, 1]
            parts_x.append((weight * take_tokens(x[:, P:], pruned)).sum(dim=1, keepdim=True))
            parts_size.append(take_tokens(size[:, P:], pruned).sum(dim=1, keepdim=True))
            if source is not None:
                parts_source.append(take_tokens(source[:, P:], pruned).sum(dim=1, keepdim=True))
        return SequenceTokens(torch.cat(parts_x, dim=1), torch.cat(parts_size, dim=1),
                              None if source is None else torch.cat(parts_source, dim=1))


@register_method("topk")
class TopK(EViT):
    """Keep the tokens the class token attends to most; drop the rest (EViT without fusion)."""

    params = {"keep": EViT.params["keep"]}
