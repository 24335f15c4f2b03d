"""``pitome``: energy-protected token merging (PiToMe, Tran et al., NeurIPS 2024), as the official
DeiT patch runs it.

In every selected block, after the attention residual and before the MLP:

* metric: the block's attention keys averaged over heads, prefix rows removed, L2-normalised;
  S = the cosine matrix (self-similarity included);
* r = floor(T − T·ratio) merges (T non-prefix tokens, Python float, as the official code);
* energy E_i = mean_j ELU(S_ij − m) with the margin m = 0.75 − 0.75·l/L (block l of L);
  tokens ranked by descending energy;
* blocks l < ceil(L/2): bipartite matching over the whole energy ranking (A = even ranks, B = odd
  ranks; the r A tokens with the most similar B partner merge into it); output
  [prefix, unmerged A by descending best similarity, B in rank order];
* later blocks: only the 2r highest-energy tokens merge (A = ranks 0, 2, … 2r−2, each into its
  most similar B of ranks 1, 3, … 2r−1); the rest are protected; output
  [prefix, protected in rank order, B in rank order];
* merges are size-weighted averages (sizes start at 1). PiToMe's DeiT patch passes no sizes to
  attention, so there is no proportional attention (``prop_attn`` turns it on).

Every prefix token is protected (the official patch removes the class token only).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tokenred import Reducer, register_method
from tokenred.merging import cosine_matrix, merge_weighted, with_prefix
from tokenred.match import Rate
from tokenred.params import Bool, Float
from tokenred.sites import SequenceContext, SequenceTokens

MARGIN = 0.75


def energy_scores(sim: torch.Tensor, margin: float) -> torch.Tensor:
    """E_i = mean_j ELU(S_ij − margin), α = 1: [B, T, T] -> [B, T]."""
    return F.elu(sim - margin).mean(dim=-1)


def pair_similarity(sim: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The rows ``a`` and columns ``b`` of the cosine matrix: [B, |A|, |B|]."""
    return sim.gather(1, a[..., None].expand(-1, -1, sim.shape[-1])).gather(
        2, b[:, None, :].expand(-1, a.shape[1], -1))


def bsm_plan(sim: torch.Tensor, order: torch.Tensor, r: int):
    """Bipartite matching over the energy ranking. Returns (keep, merged, into) as indices into
    the non-prefix tokens (keep in output order; ``into`` indexes ``keep``)."""
    a, b = order[:, 0::2], order[:, 1::2]
    best, partner = pair_similarity(sim, a, b).max(dim=-1)
    edge = best.argsort(dim=-1, descending=True)
    unmerged, merged = edge[:, r:], edge[:, :r]
    keep = torch.cat([a.gather(1, unmerged), b], dim=1)
    into = partner.gather(1, merged) + unmerged.shape[1]
    return keep, a.gather(1, merged), into


def protected_plan(sim: torch.Tensor, order: torch.Tensor, r: int):
    """Only the 2r highest-energy tokens merge: every A (even rank < 2r) into its most similar B
    (odd rank < 2r); ranks >= 2r are protected."""
    a, b, protected = order[:, 0:2 * r:2], order[:, 1:2 * r:2], order[:, 2 * r:]
    partner = pair_similarity(sim, a, b).argmax(dim=-1)
    keep = torch.cat([protected, b], dim=1)
    return keep, a, partner + protected.shape[1]


@register_method("pitome")
class PiToMe(Reducer):
    """Energy-protected merging: redundant (high-energy) tokens merge, distinctive ones stay."""

    kinds = frozenset({"sequence"})
    requires = frozenset({"metric"})
    params = {
        "ratio": Float(0.9, "share of non-prefix tokens kept at each selected block (r = "
                            "floor(T - T*ratio) merged; official DeiT runs 0.9-0.975)",
                       min=0.0, max=1.0, min_open=True),
        "prop_attn": Bool(False, "add log(size) to later attention logits (the official DeiT "
                                 "patch does not)"),
        "trace_source": Bool(False, "track which original tokens each token holds"),
    }
    rate = Rate("ratio", 0.5, 0.999, share=True)
    default_where_doc = "every block (as the official patch)"

    def check_params(self) -> None:
        self.proportional_attention = self.params["prop_attn"]
        self.trace_source = self.params["trace_source"]

    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        P = ctx.num_prefix_tokens
        T = tokens.x.shape[1] - P
        r = math.floor(T - T * self.params["ratio"])
        if r <= 0:
            return tokens
        depth = ctx.depth or ctx.num_selected
        layer = ctx.site.block
        sim = cosine_matrix(ctx.metric[:, P:])
        energy = energy_scores(sim, MARGIN - MARGIN * layer / depth)
        order = energy.argsort(dim=-1, descending=True)
        if layer < math.ceil(depth / 2):
            keep, merged, into = bsm_plan(sim, order, min(r, T // 2))
        else:
            keep, merged, into = protected_plan(sim, order, min(r, T // 2))
        return merge_weighted(tokens, with_prefix(P, keep), merged + P, into + P)
