"""Registries of methods and backbones: plain tables filled by decorators and by entry points.

Third-party packages add methods or backbones through the entry-point groups ``tokenred.methods``
and ``tokenred.backbones``. An entry point may point at a module (importing it runs its
``register_*`` decorators) or directly at a ``Reducer`` subclass / backbone factory, which is then
registered under the entry point's name.
"""
from __future__ import annotations

import difflib
import fnmatch
import warnings
from importlib import metadata
from types import ModuleType
from typing import Any, Callable, Optional

from .reducer import Reducer
from .sites import SITE_KINDS

_METHODS: dict[str, type[Reducer]] = {}
_BACKBONES: dict[str, "BackboneEntry"] = {}
_PLUGINS_LOADED = False


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class BackboneEntry:
    def __init__(self, name: str, factory: Callable[..., Any], family: str, doc: str):
        self.name, self.factory, self.family, self.doc = name, factory, family, doc


def _unknown(kind: str, name: str, known: list[str]) -> RegistryError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return RegistryError(f"unknown {kind} {name!r}{hint} (`tokenred list` shows all {kind}s)")


def register_method(name: str) -> Callable[[type[Reducer]], type[Reducer]]:
    """Class decorator: ``@register_method("my_method") class MyMethod(Reducer): ...``"""

    def deco(cls: type[Reducer]) -> type[Reducer]:
        if not (isinstance(cls, type) and issubclass(cls, Reducer)):
            raise TypeError(f"register_method({name!r}) expects a Reducer subclass, got {cls!r}")
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered (by {_METHODS[name].__module__})")
        if not cls.kinds or not set(cls.kinds) <= set(SITE_KINDS):
            raise ValueError(f"method {name!r}: kinds must be a non-empty subset of "
                             f"{SITE_KINDS}, got {sorted(cls.kinds)}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def register_backbone(name: str, family: str = "", doc: str = "") -> Callable:
    """Function decorator for a factory ``fn(pretrained=False, checkpoint=None, **kwargs) -> nn.Module``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered "
                             f"(by {_BACKBONES[name].factory.__module__})")
        _BACKBONES[name] = BackboneEntry(name, fn, family or fn.__module__.rsplit(".", 1)[-1],
                                         doc or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for group, table, register in (("tokenred.methods", _METHODS, register_method),
                                   ("tokenred.backbones", _BACKBONES, register_backbone)):
        for ep in metadata.entry_points(group=group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break tokenred itself
                warnings.warn(f"tokenred: could not load plugin {ep.name!r} from {ep.value}: {exc}",
                              stacklevel=2)
                continue
            if ep.name in table:
                continue  # the module registered itself on import
            if not isinstance(obj, ModuleType):
                register(ep.name)(obj)


def get_method(name: str) -> type[Reducer]:
    _load_plugins()
    if name not in _METHODS:
        raise _unknown("method", name, sorted(_METHODS))
    return _METHODS[name]


def get_backbone(name: str) -> Optional[BackboneEntry]:
    _load_plugins()
    return _BACKBONES.get(name)


def list_methods(pattern: str = "*") -> list[str]:
    _load_plugins()
    return sorted(n for n in _METHODS if fnmatch.fnmatchcase(n, pattern))


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names. Any timm model name that builds a VisionTransformer also works
    with ``create_backbone`` without being listed here."""
    _load_plugins()
    return sorted(n for n in _BACKBONES if fnmatch.fnmatchcase(n, pattern))
