"""``none``: the unreduced baseline, run through the same site machinery as every method so that
its cost and outputs measure the framework itself (bit-identical to the untouched model)."""
from __future__ import annotations

from tokenred import Reducer, register_method
from tokenred.sites import GridContext, SequenceContext, SequenceTokens


@register_method("none")
class NoReduction(Reducer):
    """Baseline: installs on every site and changes nothing."""

    kinds = frozenset({"sequence", "grid"})
    params = {}

    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        return tokens

    def reduce_grid(self, x, ctx: GridContext):
        return x
