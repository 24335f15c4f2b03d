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
    #: tensors the family's filter resampled to fit the model: (key, checkpoint shape, model shape)
    resampled: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    @property
    def resampled_text(self) -> str:
        return (f"{self.path}: resampled to fit the model: "
                + ", ".join(f"{k} {list(a)} -> {list(b)}" for k, a, b in self.resampled))

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
            hint = (" (the classifier head: build the model with the checkpoint's number of "
                    "classes, e.g. --backbone-args NAME:num_classes=N)"
                    if key.startswith(("head.", "fc.", "classifier.")) else "")
            lines.append(f"  shape mismatch {key}: model {list(want)} vs checkpoint "
                         f"{list(got)}{hint}")
        return "\n".join(lines)


def read_state_dict(path: str | os.PathLike, prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a tensor dict from ``path`` safely and unwrap common containers."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            obj: Any = load_file(path, device="cpu")
        except Exception as exc:  # empty, truncated or foreign file
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: "
                                  f"{exc}); re-download or re-export it") from None
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


def non_finite(tensors: Mapping[str, torch.Tensor], limit: int = 5) -> list[str]:
    """The first ``limit`` floating tensors holding NaN or Inf, as ``name (k of n values)``."""
    bad = []
    for name, t in tensors.items():
        if t.is_floating_point() and t.device.type != "meta":
            count = int((~torch.isfinite(t)).sum())
            if count:
                bad.append(f"{name} ({count} of {t.numel()} values)")
                if len(bad) == limit:
                    break
    return bad


def require_finite(weights: nn.Module | Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights (a model's, or a state_dict) holding NaN/Inf — a model that cannot mean
    anything, whose baseline would disagree with itself — naming the first bad tensors."""
    bad = non_finite(dict(weights.state_dict() if isinstance(weights, nn.Module) else weights))
    if bad:
        raise CheckpointError(f"{source}: weights hold NaN/Inf values: {', '.join(bad)}; the file "
                              f"is damaged or came from a diverged training")


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                    prefer_ema: bool = False, allow_resample: bool = False) -> LoadReport:
    """Load ``path`` into ``model``. With ``strict`` any mismatch raises ``CheckpointError`` naming
    every missing/unexpected key and shape difference, and the model is left untouched; so does
    a tensor the family's filter had to resample to fit (a patch-4 patch embedding into a
    patch-16 model, a position embedding for another grid) unless ``allow_resample``. Weights
    holding NaN/Inf are always refused."""
    state = read_state_dict(path, prefer_ema=prefer_ema)
    raw_shapes = {k: tuple(v.shape) for k, v in state.items()}
    for cls, fn in reversed(_FILTERS):
        if isinstance(model, cls):
            state = fn(state, model)
            break
    report = compare_state_dict(model, state, os.fspath(path))
    own = model.state_dict()
    report.resampled = sorted((k, raw_shapes[k], tuple(v.shape)) for k, v in state.items()
                              if k in raw_shapes and k in own and raw_shapes[k] != tuple(v.shape)
                              and tuple(own[k].shape) == tuple(v.shape))
    require_finite(state, os.fspath(path))
    if report.resampled and not allow_resample:
        if strict:
            raise CheckpointError(report.resampled_text + "; pass allow_resample=True (CLI: "
                                  "--allow-resample) to accept it, or build the model to match")
        warnings.warn(report.resampled_text, stacklevel=2)
    if not report.ok:
        if strict:
            raise CheckpointError(str(report))
        warnings.warn(str(report), stacklevel=2)
    skip = set(report.unexpected) | {key for key, _, _ in report.shape_mismatch}
    loadable = {k: v for k, v in state.items() if k not in skip}
    model.load_state_dict(loadable, strict=False)
    return report
