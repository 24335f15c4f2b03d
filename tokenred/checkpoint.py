"""Safe checkpoint loading with an exact report of what did not match.

Files are read with ``torch.load(..., weights_only=True)`` or safetensors, never a bare pickle
load. A backbone family may register a filter (beside its model code) that maps foreign key names
and shapes to its own, like timm's ``checkpoint_filter_fn``.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

_FILTERS: list[tuple[type, Callable[[dict, nn.Module], dict]]] = []

#: container keys that hold the actual state_dict, in order of preference
_CONTAINER_KEYS = ("model", "state_dict", "model_state", "module", "net")


class CheckpointError(RuntimeError):
    pass


def register_checkpoint_filter(model_class: type, fn: Callable[[dict, nn.Module], dict]) -> None:
    _FILTERS.append((model_class, fn))


@dataclass
class LoadReport:
    path: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        if self.ok:
            return f"{self.path}: all keys matched"
        lines = [f"{self.path}: checkpoint does not match the model"]
        if self.missing:
            lines.append(f"  missing in checkpoint ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected in checkpoint ({len(self.unexpected)}): "
                         + ", ".join(self.unexpected))
        for key, want, got in self.shape_mismatch:
            lines.append(f"  shape mismatch {key}: model {list(want)} vs checkpoint {list(got)}")
        return "\n".join(lines)


def read_state_dict(path: str | os.PathLike, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a tensor dict from ``path`` safely and unwrap common containers."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        obj: Any = load_file(path, device="cpu")
    else:
        try:
            with _config_objects_as_dicts():
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses arbitrary pickles: say so plainly
            raise CheckpointError(f"{path}: cannot be read safely with torch.load(weights_only=True) "
                                  f"({type(exc).__name__}: {exc})") from None
    keys = (("model_ema",) if prefer_ema else ()) + _CONTAINER_KEYS
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in keys if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise CheckpointError(f"{path}: no state_dict found; top-level keys are "
                                  f"{sorted(map(str, obj))[:20]}")
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


#: classes that training scripts pickle beside the weights (the config object in VMamba's and
#: Swin's checkpoint containers); read as plain dicts of their items, never constructed
_CONFIG_CLASSES = ("yacs.config.CfgNode",)


class _PlainDict:
    # weights_only unpickling allows SETITEMS/BUILD on OrderedDict, so a foreign config object
    # is rebuilt as one: its items and attributes become plain data, no foreign code runs
    def __new__(cls, *args: Any, **kwargs: Any) -> "OrderedDict":
        return OrderedDict()


def _config_objects_as_dicts():
    try:
        return torch.serialization.safe_globals([(_PlainDict, name) for name in _CONFIG_CLASSES])
    except (AttributeError, TypeError):  # torch < 2.5: no name-mapped allowlist
        return contextlib.nullcontext()


def _is_tensor_dict(obj: Mapping) -> bool:
    values = list(obj.values())
    return bool(values) and sum(isinstance(v, torch.Tensor) for v in values) >= max(1, len(values) // 2)


def compare_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str = "") -> LoadReport:
    own = model.state_dict()
    report = LoadReport(path)
    report.missing = sorted(k for k in own if k not in state)
    report.unexpected = sorted(k for k in state if k not in own)
    report.shape_mismatch = sorted((k, tuple(own[k].shape), tuple(state[k].shape))
                                   for k in own if k in state and own[k].shape != state[k].shape)
    return report


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                    prefer_ema: bool = False) -> LoadReport:
    """Load ``path`` into ``model``. With ``strict`` any mismatch raises ``CheckpointError`` naming
    every missing/unexpected key and shape difference, and the model is left untouched."""
    state = read_state_dict(path, prefer_ema=prefer_ema)
    for cls, fn in reversed(_FILTERS):
        if isinstance(model, cls):
            state = fn(state, model)
            break
    report = compare_state_dict(model, state, os.fspath(path))
    if not report.ok:
        if strict:
            raise CheckpointError(str(report))
        warnings.warn(str(report), stacklevel=2)
    skip = set(report.unexpected) | {key for key, _, _ in report.shape_mismatch}
    loadable = {k: v for k, v in state.items() if k not in skip}
    model.load_state_dict(loadable, strict=False)
    return report
