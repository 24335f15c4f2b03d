"""``tokenred.apply``: install a method on a model's sites and hand back an undo handle."""
from __future__ import annotations

from typing import Any, Optional, Union

from torch import nn

from .params import ParameterError, parse_method_spec
from .reducer import Reducer
from .registry import get_method
from .sites import Site, adapter_for, select_sites

_INSTALLED_ATTR = "_tokenred_handle"


class UnsupportedSiteKindError(ValueError):
    """The method serves none of the site kinds the model has (e.g. a sequence-only method on
    VMamba, whose sites are grids)."""


class Handle:
    """Returned by ``tokenred.apply``. A context manager; ``remove()`` restores the model exactly.

    ``state`` is the token state after the last forward (for sequence backbones: ``size`` and
    ``source`` of the final tokens)."""

    def __init__(self, model: nn.Module, reducer: Reducer, sites: list[Site], installation: Any):
        self.model = model
        self.reducer = reducer
        self.sites = sites
        self._installation = installation
        self.removed = False

    @property
    def method(self) -> str:
        return self.reducer.name

    @property
    def state(self) -> Any:
        return self._installation.state

    def remove(self) -> None:
        if self.removed:
            return
        self._installation.remove()
        if self.model.__dict__.get(_INSTALLED_ATTR) is self:
            del self.model.__dict__[_INSTALLED_ATTR]
        self.removed = True

    def __deepcopy__(self, memo: dict) -> "Handle":
        # the installed forwards are closures over the original modules: a copy would silently
        # run the original's blocks, so refuse and say what to do instead
        raise RuntimeError(f"cannot copy a model while tokenred's {self.method!r} is installed; "
                           f"copy it first and apply to the copy, or call handle.remove()")

    def __reduce_ex__(self, protocol: int) -> Any:
        # pickling (torch.save(model)) meets the handle first (see apply): the same message
        raise RuntimeError(f"cannot pickle or torch.save a model while tokenred's {self.method!r} "
                           f"is installed; save model.state_dict() (unchanged by tokenred), or "
                           f"call handle.remove() first")

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else f"{len(self.sites)} site(s)"
        return f"<tokenred.Handle {self.reducer!r} on {type(self.model).__name__}: {state}>"


def installed_handle(model: nn.Module) -> Optional[Handle]:
    return model.__dict__.get(_INSTALLED_ATTR)


def apply(model: nn.Module, method: Union[str, Reducer], where: Any = None, **params: Any) -> Handle:
    """Install ``method`` on the sites of ``model`` chosen by ``where``.

    ``method`` is a registered name (with ``**params``), a full spec (``"evit:keep=0.5,where=
    blocks:3/6"``, as ``tokenred search`` recommends) or a ``Reducer`` instance. ``where``: None
    (the method's documented default), an int stage, a range of stages, a list of block indices,
    ``"stage:N"`` / ``"blocks:a,b"`` strings, a site-name pattern, or a callable on ``Site``.
    The state_dict is never changed; ``handle.remove()`` restores the original forward.
    """
    if isinstance(method, Reducer):
        if params:
            raise ParameterError("pass parameters either to the Reducer or to apply(), not both")
        reducer = method
    elif isinstance(method, str):
        if ":" in method:   # a full spec ("evit:keep=0.5,where=blocks:3/6"), as search prints
            name, given = parse_method_spec(method)
            clash = sorted(set(given) & (set(params) | ({"where"} if where is not None else set())))
            if clash:
                raise ParameterError(f"{clash} given both in the spec {method!r} and as arguments")
            where = given.pop("where", where)
            method, params = name, {**given, **params}
        reducer = get_method(method)(**params)
    else:
        raise TypeError(f"method must be a registered name or a Reducer instance, got {method!r}")

    previous = installed_handle(model)
    if previous is not None and not previous.removed:
        raise RuntimeError(f"{type(model).__name__} already has {previous.method!r} installed; "
                           f"call handle.remove() first")

    adapter = adapter_for(model)
    all_sites = adapter.sites()
    served = [s for s in all_sites if s.kind in reducer.kinds]
    if not served:
        kinds = sorted({s.kind for s in all_sites})
        raise UnsupportedSiteKindError(f"method {reducer.name!r} serves {sorted(reducer.kinds)} "
                                       f"sites but {type(model).__name__} only has {kinds} sites")
    if where is None:
        chosen = reducer.default_sites(served)
    else:
        chosen = select_sites(all_sites, where)
        wrong = [s for s in chosen if s.kind not in reducer.kinds]
        if wrong:
            raise ValueError(f"method {reducer.name!r} cannot serve {wrong[0].kind} sites "
                             f"(selected: {wrong[0].name}); it serves {sorted(reducer.kinds)}")
    reducer.prepare(chosen)
    installation = adapter.install(reducer, chosen)
    handle = Handle(model, reducer, chosen, installation)
    # kept out of _modules/_parameters so the state_dict is untouched; first in the instance
    # __dict__, so that copying or pickling the model reaches the handle's clear refusal before
    # the installed forwards (closures, which would fail with an obscure message)
    rest = dict(model.__dict__)
    model.__dict__.clear()
    model.__dict__[_INSTALLED_ATTR] = handle
    model.__dict__.update(rest)
    return handle
