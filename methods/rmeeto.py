"""``rmeeto``: R-MeeTo's token merge for Vision Mamba without retraining (Shi et al., "Faster
Vision Mamba is Rebuilt in Minutes via Merged Token Re-training"; the merge of its ``--eval``
path, clean-room from ``../shared/fixtures/VIM.md``).

At the start of every ``interval``-th block (after blocks interval−1, 2·interval−1, …: the sites
``layers.k-1``), with the class token set aside: the tokens at even places of the class-free
sequence (A) are matched to those at odd places (B) by cosine similarity of the incoming mixer
output; the ``r`` A-tokens with the best match merge into it (size-weighted sums over the whole
residual stream), r = min(r, (T−1)//2). The survivors keep their order (*ordered merge*: a merged
token stays at its destination's place) and the class token goes back in.

``compare`` turns on R-MeeTo's final-length rule: at the last merge, as many tokens are merged as
bring the sequence to the length ``compare`` tokens per merge would have reached, i.e.
T0 − (number of merges)·compare with T0 the tokens entering the network. ``official=true``
reproduces the official code's two deviations from that intent: the rule's length is
197 − 11·compare whatever the model (Vim-Ti/S at 224², 11 merges, hard-coded), and the class
token is re-inserted at floor(p·(T−r)/T) (integer rescaling, which drifts off the middle) instead
of the middle of the remaining patches (Vim's own M // 2).
"""
from __future__ import annotations

from typing import Sequence

import torch

from tokenred import Reducer, register_method
from tokenred.merging import merge_weighted
from tokenred.params import Bool, Int, ParameterError
from tokenred.sites import SequenceContext, SequenceTokens, Site

#: the official rule's hard-coded token count and merge count (Vim at 224², patch 16, depth 24)
OFFICIAL_TOKENS, OFFICIAL_MERGES = 197, 11


@register_method("rmeeto")
class RMeeTo(Reducer):
    """R-MeeTo's ordered merge on Vim (no retraining): bipartite cosine matching of the mixer
    output every `interval` blocks, the class token re-inserted."""

    kinds = frozenset({"sequence"})
    params = {
        "r": Int(4, "tokens merged at each merge block", min=0),
        "interval": Int(2, "merge at the start of every interval-th block", min=1),
        "compare": Int(None, "the final-length rule: the last merge brings the sequence to "
                             "T0 - merges*compare tokens (official: 197 - 11*compare); "
                             "off when not given", min=0, optional=True),
        "official": Bool(False, "reproduce the official code: 197-token compare rule, class token "
                                "at floor(p(T-r)/T)"),
    }
    requires = frozenset({"metric"})
    default_where_doc = ("the start of every interval-th block (R-MeeTo's merge layers): sites "
                         "after blocks interval-1, 2*interval-1, ...")

    def check_params(self) -> None:
        self.last_merges: list[dict] = []

    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        sites = [s for s in sites if s.kind in self.kinds]
        depth = len(sites) + 1                      # sites sit after every block but the last
        step = self.params["interval"]
        starts = set(range(step, depth, step))      # blocks whose start merges
        return [s for s in sites if s.block + 1 in starts]

    def prepare(self, sites: Sequence[Site]) -> None:
        if not sites:
            raise ParameterError("rmeeto: no site selected")
        self._merges = len(sites)

    def begin_forward(self) -> None:
        self.last_merges = []

    def merge_count(self, length: int, ctx: SequenceContext) -> int:
        r = self.params["r"]
        compare = self.params["compare"]
        if compare is not None and ctx.index == ctx.num_selected - 1:
            if self.params["official"]:
                target = OFFICIAL_TOKENS - OFFICIAL_MERGES * compare
            else:
                target = (ctx.num_patches + 1) - self._merges * compare
            r = length - target
        return min(r, (length - 1) // 2)

    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        if ctx.num_prefix_tokens != 1 or not ctx.class_token:
            raise ParameterError("rmeeto: needs a backbone with one class token (Vim)")
        length = int(tokens.x.shape[1])
        r = self.merge_count(length, ctx)
        if r <= 0:
            return tokens
        with torch.no_grad():
            metric = ctx.metric[:, 1:]
            metric = metric / metric.norm(dim=-1, keepdim=True)
            a, b = metric[:, ::2], metric[:, 1::2]
            node_max, node_idx = (a @ b.transpose(-1, -2)).max(dim=-1)
            edge = node_max.argsort(dim=-1, descending=True)
            src, unm = edge[:, :r], edge[:, r:]
            dst = node_idx.gather(1, src)
        batch, n_b = int(tokens.x.shape[0]), int(b.shape[1])
        device = tokens.x.device
        # indices into the handed-over tokens: the class token, surviving A, every B
        b_all = (2 * torch.arange(n_b, device=device) + 2).expand(batch, -1)
        keep = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=device),
                          2 * unm + 1, b_all], dim=1)
        into = 1 + unm.shape[1] + dst
        out = merge_weighted(tokens, keep, 2 * src + 1, into)
        self.last_merges.append({"src_idx": src, "dst_idx": dst, "unm_idx": unm, "r": r})
        if self.params["official"]:
            slot = int((ctx.sequence_order == 0).nonzero()[0, 0])
            out.protected_slot = (slot * (length - r)) // length
        return out
