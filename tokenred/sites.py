"""The meeting point of backbones and methods: sites, the tokens a site hands over, and the
adapters through which a backbone family exposes its sites.

A backbone family (``backbones/*.py``) registers a *site adapter* for its model class. A method
(``methods/*.py``) is a ``Reducer``. Neither imports the other; ``tokenred.apply`` looks up the
adapter for a model, asks it for its sites, lets the reducer choose among them and asks the adapter
to install the reducer there.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

import torch
from torch import nn

SITE_KINDS = ("sequence", "grid")


@dataclass(frozen=True)
class Site:
    """A place in a backbone's forward where tokens may be reduced.

    ``block`` is the global block index (depth) over the whole network; ``stage`` the stage it
    belongs to (a plain ViT has one stage, 0); ``index_in_stage`` its position inside the stage.
    """

    name: str
    kind: str
    stage: int
    block: int
    index_in_stage: int
    num_prefix_tokens: int = 0
    #: the backbone scans this site's tokens in order (Vim): reducers' outputs are put back in
    #: position order with the protected token where the backbone expects it
    order_sensitive: bool = False

    def __repr__(self) -> str:  # short, readable in error messages
        return f"Site({self.name!r}, kind={self.kind}, stage={self.stage}, block={self.block})"


@dataclass
class SequenceTokens:
    """Tokens at a ``sequence`` site, protected (prefix) tokens first.

    x: [B, T, C]. size: [B, T, 1] number of original tokens each token stands for (None = all 1).
    source: [B, T, T0] 0/1 membership of original tokens (None unless source tracking is on).
    mask: [B, T] bool, True for real tokens (None = all real). A method that keeps a different
    number of tokens per image (ATS) pads the batch at the end and marks the padding False; the
    backbone then hides padded tokens from every later attention and from pooling.

    Order-sensitive backbones (a scan: ``SequenceContext.order_sensitive``) also hand over
    ``positions`` [B, T] long: the original patch index each token stands at (-1 for protected
    tokens). A reducer carries them like ``size`` (``take`` does); a merged token sits where the
    method says (ToMe: the first patch it holds, R-MeeTo: its destination's place). After the
    reducer the backbone puts the tokens back in ascending position order, with its protected token
    at ``protected_slot`` (an index among the output tokens in sequence order; None: the backbone's
    own rule, e.g. Vim's middle M // 2).
    """

    x: torch.Tensor
    size: Optional[torch.Tensor] = None
    source: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    positions: Optional[torch.Tensor] = None
    protected_slot: Optional[int] = None

    def take(self, index: torch.Tensor) -> "SequenceTokens":
        """The tokens at ``index`` ([K] or [B, K]), every per-token field alike."""
        return SequenceTokens(take_tokens(self.x, index), take_tokens(self.size, index),
                              take_tokens(self.source, index), take_per_token(self.mask, index),
                              take_per_token(self.positions, index))


def take_per_token(t: Optional[torch.Tensor], index: torch.Tensor) -> Optional[torch.Tensor]:
    """``take_tokens`` for per-token values without a channel dim ([B, T]: mask, positions)."""
    return None if t is None else take_tokens(t[..., None], index)[..., 0]


def in_sequence_order(tokens: SequenceTokens, num_protected: int,
                      default_slot: Callable[[int], int]) -> tuple[SequenceTokens, int]:
    """A reducer's output (protected tokens first, the rest in any order) laid out as an
    order-sensitive backbone scans it: the unprotected tokens sorted by ``positions`` (stable),
    the protected token(s) inserted at ``tokens.protected_slot`` or, when the reducer left it
    None, at ``default_slot(number of unprotected tokens)``. Returns the tokens and the slot."""
    if tokens.positions is None:
        raise SiteQuantityError("the reducer returned no token positions; an order-sensitive "
                                "backbone needs them (carry SequenceTokens.positions, e.g. with "
                                "SequenceTokens.take)")
    if tokens.mask is not None:
        raise SiteQuantityError("per-image token counts (a padding mask) cannot run through an "
                                "order-sensitive scan")
    rest = tokens.positions[:, num_protected:]
    order = rest.argsort(dim=1, stable=True) + num_protected
    m = int(rest.shape[1])
    slot = tokens.protected_slot if tokens.protected_slot is not None else default_slot(m)
    if not 0 <= slot <= m:
        raise SiteQuantityError(f"protected_slot={slot} is outside 0..{m}")
    batch = order.shape[0]
    head = torch.arange(num_protected, device=order.device).expand(batch, -1)
    index = torch.cat([order[:, :slot], head, order[:, slot:]], dim=1)
    return tokens.take(index), slot


#: where in a sequence block a reducer works (``Reducer.sequence_placement``)
SEQUENCE_PLACEMENTS = ("attention", "block_input")


def take_tokens(x: Optional[torch.Tensor], index: torch.Tensor) -> Optional[torch.Tensor]:
    """``x`` [B, T, C] selected or reordered along T by ``index`` ([K] shared by the batch, or
    [B, K] per image) -> [B, K, C]; None stays None (optional size/source tensors)."""
    if x is None:
        return None
    if index.dim() == 1:
        return x.index_select(1, index)
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


class SequenceState:
    """Token bookkeeping of a sequence installation for one forward (reset at its start): the
    current tokens' size/source/mask (and, on order-sensitive backbones, positions and where the
    class token sits), the tokens leaving each site and, with source tracking, each site's output
    sources. ``Handle.state`` is this object."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.size: Optional[torch.Tensor] = None
        self.source: Optional[torch.Tensor] = None
        self.mask: Optional[torch.Tensor] = None
        self.positions: Optional[torch.Tensor] = None
        self.class_slot: Optional[int] = None
        self.tokens: dict[str, int] = {}  # site name -> tokens leaving that site
        self.class_slots: dict[str, int] = {}   # site name -> class-token place after it (scans)
        # set by the adapter for drawing: the patch grid (rows, cols) and which columns of
        # ``source`` are its patches, row-major (the others are protected tokens)
        self.patch_grid: Optional[tuple[int, int]] = None
        self.patch_columns: Optional[torch.Tensor] = None
        self.site_sources: dict[str, torch.Tensor] = {}   # site name -> [B, T, T0] (tracing)
        self.last_attention: Optional[tuple] = None       # (q, k, bias, scale) of a captured block

    @property
    def tokens_out(self) -> Optional[int]:
        """Tokens leaving the last selected site (what the rest of the network runs on)."""
        return list(self.tokens.values())[-1] if self.tokens else None

    def record(self, site: "Site", tokens: SequenceTokens, class_slot: Optional[int] = None) -> None:
        """What a site's reducer handed back becomes the current token state."""
        if class_slot is not None:
            self.class_slot = self.class_slots[site.name] = class_slot
        self.size, self.source, self.mask = tokens.size, tokens.source, tokens.mask
        self.positions = tokens.positions
        self.tokens[site.name] = int(tokens.x.shape[1])
        if tokens.source is not None:
            self.site_sources[site.name] = tokens.source


def reset_every_forward(module: nn.Module, state: Any, reducer: Any,
                        on_reset: Optional[Callable[[], None]] = None) -> Callable[[], None]:
    """The installation lifecycle every adapter shares: before each forward of ``module`` the
    token state is reset (``state.reset()``, then ``on_reset`` for what the adapter records per
    forward) and the reducer told (``begin_forward``: a random method re-seeds). Returns the undo."""

    def begin(*_: Any) -> None:
        state.reset()
        if on_reset is not None:
            on_reset()
        reducer.begin_forward()

    return module.register_forward_pre_hook(begin).remove


class SiteQuantityError(ValueError):
    """A reducer asked a site for something this backbone or placement cannot give (attention at
    a block's input, a class-token attention row without a class token)."""


class SequenceContext:
    """What a sequence site tells the reducer besides the tokens themselves.

    Every attention-derived quantity is computed on first access only, so a reducer pays for
    exactly what it reads:

    * ``metric`` — attention keys averaged over heads, [B, T, head_dim] (ToMe, PiToMe);
    * ``cls_attention`` — the class token's attention row, post-softmax, per head, [B, H, T]
      (cls column included): computed from q_cls and the keys, O(T·d) per head, no [T, T]
      matrix (EViT, Top-K, ATS);
    * ``values`` — the attention's value vectors, heads concatenated, [B, T, H·head_dim] (ATS);
    * ``received_attention`` — at a block's input: the attention each token received in the
      previous block, summed over heads and queries, [B, T] (weighted K-Medoids; O(T²));
    * ``backward_output`` — on a bidirectional scan (Vim): the backward branch's inner output of
      the block just run (gated, with the D skip, before the averaging and out_proj), [B, T, E]
      in the tokens' order (ToP-ViM's score).

    ``order_sensitive``: the backbone scans the tokens in order (see ``SequenceTokens``); there
    ``sequence_order`` [T] lists, for each place of the backbone's own sequence, which of the
    handed-over tokens sits there (protected ones included), for methods whose official rule is
    written in sequence positions.

    A quantity the site cannot give raises ``SiteQuantityError`` naming it.
    """

    def __init__(self, site: Site, index: int, num_selected: int, *, class_token: bool,
                 distill_token: bool, metric_fn: Optional[Callable[[], torch.Tensor]] = None,
                 trace_source: bool, providers: Optional[dict] = None, placement: str = "attention",
                 depth: Optional[int] = None, num_patches: Optional[int] = None,
                 order_sensitive: bool = False, sequence_order: Optional[torch.Tensor] = None):
        self.site = site
        self.order_sensitive = order_sensitive or site.order_sensitive
        self.sequence_order = sequence_order
        self.depth = depth                  # blocks in the network (depth-scaled schedules)
        self.num_patches = num_patches      # non-prefix tokens entering the network
        self.index = index                  # position of this site among the selected ones
        self.num_selected = num_selected
        self.num_prefix_tokens = site.num_prefix_tokens
        self.class_token = class_token
        self.distill_token = distill_token
        self.trace_source = trace_source
        self.placement = placement
        self._providers = dict(providers or {})
        if metric_fn is not None:
            self._providers["metric"] = metric_fn
        self._cache: dict[str, torch.Tensor] = {}

    def _get(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            provider = self._providers.get(name)
            if provider is None:
                raise SiteQuantityError(
                    f"{self.site.name} ({self.placement} placement) cannot provide {name!r}; "
                    f"available here: {sorted(self._providers) or 'nothing'}")
            self._cache[name] = provider()
        return self._cache[name]

    @property
    def metric(self) -> torch.Tensor:
        return self._get("metric")

    @property
    def cls_attention(self) -> torch.Tensor:
        return self._get("cls_attention")

    @property
    def values(self) -> torch.Tensor:
        return self._get("values")

    @property
    def received_attention(self) -> torch.Tensor:
        return self._get("received_attention")

    @property
    def backward_output(self) -> torch.Tensor:
        return self._get("backward_output")

    def provides(self, name: str) -> bool:
        return name in self._providers


class GridContext:
    """What a ``grid`` site tells the reducer besides the map itself.

    At a grid site the backbone hands over the 2D map entering its scan, channel-last
    [B, H, W, C]; ``reduce_grid`` returns either that map (same shape: nothing to restore) or a
    ``ReducedGrid``.
    """

    def __init__(self, site: Site, index: int, num_selected: int):
        self.site = site
        self.index = index                  # position of this site among the selected ones
        self.num_selected = num_selected


@dataclass
class ReducedGrid:
    """What a grid site scans instead of the full map, and how the full map comes back.

    ``x`` is either a smaller regular grid [B, h, w, C] (the backbone's ordinary cross-scan runs on
    it: the fast path) or a token subset [B, T, C] with ``positions`` [B, T, 2] or [T, 2] (long,
    (row, col) in the full map). A subset may come in any order: the backbone scans it in
    row-major and column-major order of the positions and both reversed, and hands the output
    back in the subset's own order.

    ``restore`` maps the scan's output (``x``'s layout, any channel count) to [B, H, W, C'].
    ``copies`` says that ``restore`` only copies: every full-map position receives exactly one
    scanned token's value (nearest upsampling, unmerging). Then per-token layers commute with it
    and the backbone may run them (out_norm, out_proj) on the reduced tokens first — the same
    result for less work. Leave it False for a restore that computes (zero fill, interpolation).
    """

    x: torch.Tensor
    restore: Callable[[torch.Tensor], torch.Tensor]
    positions: Optional[torch.Tensor] = None
    copies: bool = False

    @property
    def is_subset(self) -> bool:
        return self.positions is not None

    @property
    def num_tokens(self) -> int:
        return int(self.x.shape[1]) if self.is_subset else int(self.x.shape[1] * self.x.shape[2])


#: Where every grid method reduces by default: the same sites for all of them, so that the default
#: head-to-head compares methods at one token budget. Stage 0 (the 56x56 maps at 224) gives most
#: of the speed for the fewest reduced blocks (``benchmarks/grid_methods.py --where``; README,
#: "Grid sites"), and ToMe for Stable Diffusion likewise reduces only at the highest resolution.
DEFAULT_GRID_WHERE = "stage:0"


#: the reduction blocks of EViT, DynamicViT and TokenReduction on a 12-block ViT (0-based)
TWELVE_BLOCK_LOCATIONS = (3, 6, 9)


def scaled_locations(depth: int, locations: Sequence[int] = TWELVE_BLOCK_LOCATIONS,
                     reference_depth: int = 12) -> list[int]:
    """Block locations given for a 12-block ViT, scaled to ``depth``: floor(l · depth / 12)."""
    return sorted({(loc * depth) // reference_depth for loc in locations})


def scaled_sequence_sites(sites: Sequence[Site], kinds: Iterable[str]) -> list[Site]:
    """The sequence sites at ``scaled_locations`` of the model's depth."""
    sites = [s for s in sites if s.kind in set(kinds)]
    chosen = set(scaled_locations(len(sites)))
    return [s for i, s in enumerate(sites) if i in chosen]


def cumulative_keep_count(num_patches: int, keep: float, index: int) -> int:
    """Tokens kept at the index-th reduction under a cumulative keep rate (TokenReduction's
    K-Medoids / DPC-KNN): int(P · keep^(index+1))."""
    return int(num_patches * keep ** (index + 1))


def default_grid_sites(sites: Sequence[Site]) -> list[Site]:
    """The grid sites chosen by ``DEFAULT_GRID_WHERE``."""
    return select_sites([s for s in sites if s.kind == "grid"], DEFAULT_GRID_WHERE)


class Installation(Protocol):
    """What an adapter returns from ``install``: something that undoes it and exposes the token
    state of the last forward (for sequence backbones: final ``size`` and ``source``)."""

    def remove(self) -> None: ...

    @property
    def state(self) -> Any: ...


class SiteAdapter(Protocol):
    def sites(self) -> list[Site]: ...

    def install(self, reducer: Any, sites: Sequence[Site]) -> Installation: ...


class UnsupportedModelError(TypeError):
    """The model has no site adapter, or its modules are not the shape the adapter expects."""


_ADAPTERS: list[tuple[type, Callable[[nn.Module], SiteAdapter]]] = []


def register_site_adapter(model_class: type, factory: Callable[[nn.Module], SiteAdapter]) -> None:
    """Declare that models that are instances of ``model_class`` expose sites via ``factory``."""
    _ADAPTERS.append((model_class, factory))


def adapter_for(model: nn.Module) -> SiteAdapter:
    for cls, factory in reversed(_ADAPTERS):  # later (more specific) registrations win
        if isinstance(model, cls):
            return factory(model)
    known = ", ".join(sorted({c.__module__ + "." + c.__qualname__ for c, _ in _ADAPTERS}))
    raise UnsupportedModelError(f"tokenred has no site adapter for {type(model).__module__}."
                                f"{type(model).__qualname__}; supported model classes: {known}")


class SiteSelectionError(ValueError):
    pass


def _parse_int_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.replace("/", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:  # an inclusive range "a-b"; indices are never negative
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def select_sites(sites: Sequence[Site], where: Any) -> list[Site]:
    """Resolve a ``where`` selector against a backbone's sites.

    Accepted forms (``None`` is resolved by the reducer's default before this is called):
      - ``int``: one stage index; ``range``: several stages;
      - ``list``/``tuple`` of ints: global block indices;
      - ``"stage:1"``, ``"stages:0-2"``, ``"blocks:3,6,9"`` / ``"blocks:0-5"``: the same as strings
        (``/`` also separates indices, ``"blocks:3/6/9"``, for method specs on a command line);
      - any other string: an fnmatch pattern on site names (``"layers.2.*"``);
      - a callable ``site -> bool``.
    """
    sites = list(sites)
    if callable(where) and not isinstance(where, (str, range)):
        chosen = [s for s in sites if where(s)]
    elif isinstance(where, bool):
        raise SiteSelectionError(f"where={where!r} is not a valid selector")
    elif isinstance(where, int):
        _check_exists("stage", [where], {s.stage for s in sites})
        chosen = [s for s in sites if s.stage == where]
    elif isinstance(where, range):
        _check_exists("stage", list(where), {s.stage for s in sites})
        chosen = [s for s in sites if s.stage in where]
    elif isinstance(where, (list, tuple)):
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in where):
            raise SiteSelectionError(f"where={where!r}: a list selects blocks and must hold ints")
        _check_exists("block", list(where), {s.block for s in sites})
        chosen = [s for s in sites if s.block in set(where)]
    elif isinstance(where, str):
        head, colon, tail = where.partition(":")
        if colon and head in ("stage", "stages", "block", "blocks"):
            try:
                indices = _parse_int_list(tail)
            except ValueError as exc:
                raise SiteSelectionError(f"where={where!r}: could not read the indices ({exc})") from None
            if not indices:
                raise SiteSelectionError(f"where={where!r}: no index given")
            if head.startswith("stage"):
                _check_exists("stage", indices, {s.stage for s in sites})
                chosen = [s for s in sites if s.stage in set(indices)]
            else:
                return select_sites(sites, indices)
        else:
            chosen = [s for s in sites if fnmatch.fnmatchcase(s.name, where)]
    else:
        raise SiteSelectionError(
            f"where={where!r} is not a selector; use an int (stage), range (stages), list of ints "
            f"(blocks), 'stage:N', 'blocks:a,b', a site-name pattern or a callable")
    if not chosen:
        names = ", ".join(s.name for s in sites[:8]) + (" ..." if len(sites) > 8 else "")
        raise SiteSelectionError(f"where={where!r} selects no site; sites are: {names}")
    return chosen


def _check_exists(what: str, wanted: Iterable[int], available: set) -> None:
    missing = sorted(set(wanted) - available)
    if missing:
        raise SiteSelectionError(f"{what} index {missing} does not exist; "
                                 f"available {what}s: {sorted(available)}")
