"""``create_backbone``: the one front door for building a backbone by name."""
from __future__ import annotations

import difflib
import os
from typing import Any, Optional

from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, require_finite
from .registry import RegistryError, get_backbone, list_backbones
from .sites import adapter_for


def create_backbone(name: str, pretrained: bool = False, checkpoint: Optional[str | os.PathLike] = None,
                    strict: bool = True, allow_resample: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered backbone, or any timm model whose class tokenred has sites for (every
    ``VisionTransformer``: DeiT, ViT, distilled DeiT, register-token ViTs, ...).

    ``checkpoint`` loads a local file safely (weights_only / safetensors, the family's key filter)
    and raises with the exact missing/unexpected keys unless ``strict=False``; a tensor the
    family's filter would resample to fit (position or patch embedding) is refused unless
    ``allow_resample``. Weights holding NaN/Inf are refused. The model is returned in eval mode.
    """
    entry = get_backbone(name)
    if entry is not None:
        model = entry.factory(pretrained=pretrained, **kwargs)
    else:
        import timm

        if not timm.is_model(name):
            known = list_backbones() + timm.list_models()
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RegistryError(f"unknown backbone {name!r}{hint}")
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except (OSError, RuntimeError) as exc:
            if not pretrained:
                raise
            # offline machines: timm's hub download fails deep inside huggingface_hub
            raise CheckpointError(f"could not get pretrained weights for {name!r} "
                                  f"({type(exc).__name__}: {exc}); download them elsewhere and "
                                  f"pass checkpoint=PATH (CLI: --checkpoint)") from exc
        adapter_for(model)  # refuse models tokenred cannot reduce, before anyone times them
    if pretrained and checkpoint is None:
        require_finite(model, f"{name}: pretrained weights")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict, allow_resample=allow_resample)
    return model.eval()


def runs_selective_scan(model: nn.Module) -> bool:
    """Whether ``model`` runs a selective scan: every SSM backbone exposes
    ``set_scan_backend(name)`` to pin its scan's backend, and a model without one has none."""
    return callable(getattr(model, "set_scan_backend", None))


def default_input_size(name: str, **kwargs: Any) -> int:
    """The input resolution a backbone is made for (its data config's ``input_size``; 224 when it
    declares none), found without allocating weights (built on the meta device)."""
    import torch

    from .reference import get_reference

    spec = get_reference(name)
    if spec is not None and "img_size" not in kwargs:
        return spec.input_px
    with torch.device("meta"):
        model = create_backbone(name, **kwargs)
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    grid = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if grid is not None and "img_size" in kwargs:
        return int(tuple(grid)[0])
    return int(size[-1]) if size else 224
