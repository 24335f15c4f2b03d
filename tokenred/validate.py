"""Settings checked before anything is built, timed or written: each bad value is one
``ParameterError`` naming it and what is allowed.

``preflight`` builds every backbone on the meta device (no weights allocated, well under a second
each) and runs one forward there, so a model argument the backbone does not take, an input size
it cannot run at, or a ``where=`` that selects no site fails at once, not after minutes of
measuring.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from .params import ParameterError

#: the eval resize interpolations timm's transforms accept
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def check_names(kind: str, names: Sequence[str]) -> None:
    """A non-empty list without blanks or repeats."""
    if not names:
        raise ParameterError(f"no {kind} given; name at least one")
    blank = [n for n in names if not str(n).strip()]
    if blank:
        raise ParameterError(f"an empty {kind} name in {list(names)}")
    seen = set()
    for n in names:
        if n in seen:
            raise ParameterError(f"{kind[:-1] if kind.endswith('s') else kind} {n!r} is listed "
                                 f"twice in {list(names)}")
        seen.add(n)


def check_transform_overrides(overrides: Optional[Mapping[str, Any]]) -> dict:
    """``crop_pct`` in (0, 1], ``interpolation`` one of ``INTERPOLATIONS``, ``mean``/``std``
    one or three numbers (``std`` > 0); other timm data-config keys pass through."""
    out = dict(overrides or {})
    if "crop_pct" in out:
        crop = out["crop_pct"]
        if (isinstance(crop, bool) or not isinstance(crop, (int, float)) or not math.isfinite(crop)
                or not 0 < crop <= 1):
            raise ParameterError(f"crop_pct={crop!r}: give a fraction in (0, 1], e.g. 0.875 "
                                 f"(resize to 256, crop 224)")
    if "interpolation" in out and out["interpolation"] not in INTERPOLATIONS:
        raise ParameterError(f"interpolation={out['interpolation']!r}: allowed are "
                             f"{', '.join(INTERPOLATIONS)}")
    for name in ("mean", "std"):
        if name in out:
            out[name] = _channel_values(name, out[name])
    return out


def _channel_values(name: str, value: Any) -> tuple:
    values = (value,) if isinstance(value, (int, float)) else tuple(value)
    ok = (len(values) in (1, 3)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  for v in values))
    if not ok or (name == "std" and any(v <= 0 for v in values)):
        raise ParameterError(f"{name}={value!r}: give one or three finite numbers"
                             + (" above 0" if name == "std" else "")
                             + " (e.g. 0.4914,0.4822,0.4465)")
    return tuple(float(v) for v in (values * 3 if len(values) == 1 else values))


def check_amp(amp: bool, dtype: Any) -> None:
    """Autocast needs a lower-precision dtype (float16 and bfloat16, the only others
    ``resolve_dtype`` gives, autocast on CPU and CUDA alike)."""
    import torch

    if amp and dtype == torch.float32:
        raise ParameterError("--amp runs fp32 weights under autocast to a lower precision: give "
                             "--dtype float16 or bfloat16 with it")


def check_positive_int(value: Any, what: str = "input size", unit: str = "pixels") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{what} {value!r}: give a positive whole number of {unit}")
    return value


def backbone_input_size(backbone: str, kwargs: Mapping[str, Any], input_size: Any) -> int:
    """``input_size`` checked, or the backbone's own when ``None``."""
    from .backbone import default_input_size

    if input_size is not None:
        return check_positive_int(input_size)
    try:
        return default_input_size(backbone, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        if not kwargs:
            raise
        raise ParameterError(f"{backbone} cannot be built with "
                             f"{', '.join(f'{k}={v!r}' for k, v in kwargs.items())}: {exc}"
                             ) from None


def preflight(backbone: str, kwargs: Mapping[str, Any], input_size: int,
              selections: Sequence[tuple[str, Any]]) -> "torch.nn.Module":
    """Build ``backbone`` on the meta device with ``kwargs``, run one forward at ``input_size``
    and resolve every ``(method text, where)`` selection against its sites; returns the meta
    model (what it is, without its weights)."""
    import torch

    from .backbone import create_backbone
    from .sites import SiteSelectionError, adapter_for, select_sites

    from .registry import get_backbone

    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    build = dict(kwargs)
    if get_backbone(backbone) is None and "img_size" not in build:
        build["img_size"] = input_size    # compare builds timm ViTs for the input size
    try:
        with torch.device("meta"):
            model = create_backbone(backbone, **build)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        if not kwargs:
            raise
        raise ParameterError(f"{backbone} cannot be built with {args}: {exc}") from None
    try:
        with torch.device("meta"), torch.no_grad():
            model(torch.empty(1, 3, input_size, input_size))
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ParameterError(f"{backbone}{' (' + args + ')' if args else ''} cannot run at "
                             f"{input_size}x{input_size} px ({reason}); give an input size it "
                             f"supports (e.g. a multiple of its patch size, at least one patch)"
                             ) from None
    sites = adapter_for(model).sites()
    for text, where in selections:
        try:
            chosen = select_sites(sites, where)
        except SiteSelectionError as exc:
            raise ParameterError(f"{text} on {backbone}: {exc}") from None
        if not chosen:
            raise ParameterError(f"{text} on {backbone}: where={where!r} selects no site; its "
                                 f"sites are {sites[0].name} ... {sites[-1].name}")
    return model
