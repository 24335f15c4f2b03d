"""``topvim``: ToP-ViM's token pruning for Vision Mamba (Zhan et al., "Exploring Token Pruning in
Vision State Space Models", NeurIPS 2024; its inference path, clean-room from
``../shared/fixtures/VIM.md``).

After each selected block, every patch is scored by the block's backward-branch output summed
over channels (gated, with the D skip, before the averaging and out_proj); with N tokens
(class token included), K = ceil((N−1)·keep), made odd, and the K−1 best-scoring patches stay,
in their order, the class token in the middle of them ((K−1)//2, Vim's M // 2). Default blocks:
the official "after blocks 5, 10 and 15" (of 24, 1-based) scaled to the depth.

``official=true`` reproduces the official code, per image: the blocks 5/10/15 as they are
(whatever the depth), and the score read in the backward branch's *flipped* order (the value of
token N−1−j ranks token j). The official code's other defects are not reproduced: it masks the
class token in the first image of a batch only (the others may keep it twice), so results
depend on the batch; tokenred masks it in every image, which equals the official code run one
image at a time. Its class slot N // 2 is the class token only for odd N (an even patch count
at the first prune); ``official=true`` refuses even N instead of treating a patch as the class.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from tokenred import Reducer, register_method
from tokenred.params import Bool, Float, ParameterError
from tokenred.sites import SequenceContext, SequenceTokens, Site, SiteQuantityError

#: after these blocks (1-based) of a 24-block Vim: n >= 5, (n - 5) % 5 == 0, n < 20
OFFICIAL_BLOCKS = (5, 10, 15)
OFFICIAL_DEPTH = 24


def official_sites(depth: int) -> list[int]:
    """0-based blocks after which the official code prunes (hard-coded, any depth)."""
    return [n - 1 for n in OFFICIAL_BLOCKS if n < depth]


def scaled_sites(depth: int) -> list[int]:
    """The official blocks scaled to ``depth``: round(n·depth/24) − 1, within the sites."""
    return sorted({max(0, min(depth - 2, round(n * depth / OFFICIAL_DEPTH) - 1))
                   for n in OFFICIAL_BLOCKS})


def kept_patches(length: int, keep: float) -> int:
    """Patches kept from ``length`` tokens (class token included): K − 1, K = ceil((N−1)·keep)
    made odd."""
    k = math.ceil((length - 1) * keep)
    if k % 2 == 0:
        k += 1
    return k - 1


@register_method("topvim")
class ToPViM(Reducer):
    """ToP-ViM's pruning on Vim: backward-branch scores, keep a share after selected blocks."""

    kinds = frozenset({"sequence"})
    params = {
        "keep": Float(0.8, "share of tokens kept at each prune (K = ceil((N-1)*keep), odd)",
                      min=0.0, max=1.0, min_open=True),
        "official": Bool(False, "reproduce the official code (per image): blocks 5/10/15 as "
                                "given, flipped score order"),
    }
    requires = frozenset({"backward_output"})
    default_where_doc = ("after blocks 5, 10, 15 of 24 (1-based, ToP-ViM's schedule) scaled to the "
                         "depth; official=true: exactly those blocks")

    def check_params(self) -> None:
        self.last_prunes: list[dict] = []

    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        sites = [s for s in sites if s.kind in self.kinds]
        depth = len(sites) + 1                      # sites sit after every block but the last
        blocks = set(official_sites(depth) if self.params["official"] else scaled_sites(depth))
        return [s for s in sites if s.block in blocks]

    def begin_forward(self) -> None:
        self.last_prunes = []

    def score(self, ctx: SequenceContext, length: int) -> torch.Tensor:
        score = ctx.backward_output.sum(dim=-1)                 # [B, T], the tokens' order
        if not self.params["official"]:
            return score
        order = ctx.sequence_order                              # sequence place -> token
        slot = int((order == 0).nonzero()[0, 0])
        if slot != length // 2:
            raise SiteQuantityError(
                f"topvim official=true: the class token sits at {slot} of {length} tokens, but the "
                f"official code takes N // 2 = {length // 2} for it (an even token count); "
                f"tokenred does not reproduce a run that prunes its class token")
        flipped = torch.empty_like(score)
        flipped[:, order] = score[:, order].flip(1)             # token j ranked by N-1-j's value
        return flipped

    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        if ctx.num_prefix_tokens != 1 or not ctx.order_sensitive:
            raise ParameterError("topvim: needs a Vim (one class token, an order-sensitive scan)")
        length = int(tokens.x.shape[1])
        kept = kept_patches(length, self.params["keep"])
        if kept >= length - 1:
            return tokens
        score = self.score(ctx, length)[:, 1:]
        top = score.topk(kept, dim=1).indices.sort(dim=1).values + 1
        batch = top.shape[0]
        index = torch.cat([torch.zeros(batch, 1, dtype=torch.long, device=top.device), top], 1)
        self.last_prunes.append({"kept": top, "score": score})
        return tokens.take(index)
