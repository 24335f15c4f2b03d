"""Base class of every token-reduction method."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

if TYPE_CHECKING:
    import torch

from .params import Param, validate
from .sites import GridContext, ReducedGrid, SequenceContext, SequenceTokens, Site


class Reducer:
    """A token-reduction method.

    Subclasses set ``kinds`` (the site kinds they serve), ``params`` (a ``{name: Param}`` table)
    and implement ``reduce_<kind>`` for each kind. ``tokenred.register_method(name)`` registers
    them. Parameters are validated on construction and available as ``self.params``.
    """

    name: ClassVar[str] = ""
    kinds: ClassVar[frozenset] = frozenset()
    params: ClassVar[Mapping[str, Param]] = {}
    #: sequence backbones add log(size) to the attention logits after this reducer has merged
    proportional_attention: bool = False
    #: keep [B, T, T0] source membership (for visualisation; costs memory)
    trace_source: bool = False
    #: where in a sequence block the reducer works: "attention" (after the attention residual,
    #: before the MLP: ToMe, EViT, ATS, PiToMe) or "block_input" (before norm1: K-Medoids, DPC-KNN)
    sequence_placement: ClassVar[str] = "attention"
    #: the site quantities the reducer reads (``SequenceContext``: metric, cls_attention, values,
    #: received_attention); a backbone that cannot give one refuses the installation up front
    requires: ClassVar[frozenset] = frozenset()
    #: the parameter a matched-budget comparison solves for (``tokenred.match.Rate``); None: the
    #: method has no rate to tune (it is compared at its own setting only)
    rate: ClassVar[Any] = None
    #: a sentence on the default ``where`` for ``tokenred list`` and the README
    default_where_doc: ClassVar[str] = "every site of a supported kind"

    def __init__(self, **params: Any):
        self.params = validate(self.name or type(self).__name__, self.params, params)
        self.check_params()

    def check_params(self) -> None:
        """Cross-parameter checks; raise ``ParameterError``."""

    # -- site selection ---------------------------------------------------------------------
    def default_sites(self, sites: Sequence[Site]) -> list[Site]:
        return [s for s in sites if s.kind in self.kinds]

    def prepare(self, sites: Sequence[Site]) -> None:
        """Called once with the selected sites before installation (e.g. to lay out a schedule)."""

    def begin_forward(self) -> None:
        """Called at the start of every forward of the model it is installed on."""

    # -- the work ------------------------------------------------------------------------------
    def reduce_sequence(self, tokens: SequenceTokens, ctx: SequenceContext) -> SequenceTokens:
        raise NotImplementedError(f"{self.name} does not reduce sequences")

    def reduce_grid(self, x: "torch.Tensor", ctx: GridContext) -> "torch.Tensor | ReducedGrid":
        """``x``: the channel-last map [B, H, W, C] entering a grid site's scan. Return ``x``
        (nothing reduced) or a ``ReducedGrid``: a smaller regular grid or a token subset with
        positions, and the ``restore`` that maps the scan's output back to the full map."""
        raise NotImplementedError(f"{self.name} does not reduce grids")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"
