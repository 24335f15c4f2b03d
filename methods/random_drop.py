"""``random_drop``: drop a random subset of tokens — the control every pruning method must beat.

At each selected site, a fixed share (``keep``) or a fixed number (``r``) of the unprotected tokens
is dropped, chosen uniformly at random and independently per image. The kept tokens stay in their
original order; prefix tokens are never dropped; at least one unprotected token is always kept.
The generator is re-seeded with ``seed`` at the start of every forward, so a given batch position
sees the same drops in every run, on every device (the noise is drawn on the CPU).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from tokenred import Reducer, register_method
from tokenred.params import Float, Int, ParameterError
from tokenred.sites import SequenceContext, SequenceTokens, Site

DEFAULT_KEEP = 0.7


def random_keep_indices(batch: int, n: int, keep: int, generator: torch.Generator,
                        device: torch.device) -> torch.Tensor:
    """[batch, keep] sorted indices into n tokens, uniformly at random per row."""
    noise = torch.rand(batch, n, generator=generator)
    idx = noise.argsort(dim=1)[:, :keep].sort(dim=1).values
    return idx.to(device)


def gather_tokens(t: Optional[torch.Tensor], idx: torch.Tensor) -> Optional[torch.Tensor]:
    if t is None:
        return None
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


@register_method("random_drop")
class RandomDrop(Reducer):
    """Drop a random share (keep) or number (r) of tokens at each selected block; seeded."""

    kinds = frozenset({"sequence"})
    params = {
        "keep": Float(None, f"share of unprotected tokens kept at each selected site "
                            f"(default {DEFAULT_KEEP} when r is not given)",
                      min=0.0, max=1.0, min_open=True, optional=True),
        "r": Int(None, "number of tokens dropped at each selected site (instead of keep)",
                 min=0, optional=True),
        "seed": Int(0, "seed of the generator, re-seeded at every forward", min=0),
    }
    default_where_doc = ("blocks depth//4, depth//2 and 3·depth//4 (3, 6, 9 of 12: the EViT / "
                         "DynamicViT reduction locations)")

    def check_params(self) -> None:
        if self.params["keep"] is not None and self.params["r"] is not None:
            raise ParameterError("random_drop: give either keep or r, not both")
        if self.params["keep"] is None and self.params["r"] is None:
            self.params["keep"] = DEFAULT_KEEP
        self._generator = torch.Generator()

    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        sites = [s for s in sites if s.kind in self.kinds]
        depth = len(sites)
        chosen = sorted({depth // 4, depth // 2, (3 * depth) // 4})
        return [sites[i] for i in chosen]

    def begin_forward(self) -> None:
        self._generator.manual_seed(self.params["seed"])

    def kept_count(self, n: int) -> int:
        if self.params["r"] is not None:
            kept = n - self.params["r"]
        else:
            kept = round(self.params["keep"] * n)
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
        return SequenceTokens(gather_tokens(tokens.x, idx), gather_tokens(tokens.size, idx),
                              gather_tokens(tokens.source, idx))
