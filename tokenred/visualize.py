"""Draw what a method does to a real image: which patches each final token holds.

For sequence backbones (ViTs) the method runs with source tracking on; every final token's source
row says which original patches it holds. Merged groups (ToMe) are filled with their mean colour
and outlined; patches no token holds any more (random_drop) are greyed out. The panel beside it is
the model's input crop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .apply import apply
from .backbone import create_backbone
from .evaluate import eval_transform
from .params import parse_method_spec


@dataclass
class TokenGroups:
    """``groups``: [gh, gw] int map, the final token holding each patch (-1: dropped)."""

    image: np.ndarray          # [H, W, 3] float in [0, 1], the model's input crop
    groups: np.ndarray
    patch: int
    num_tokens: int


def token_groups(backbone: str, method: str, image_path: str, input_size: int = 224,
                 checkpoint: Optional[str] = None, pretrained: bool = False) -> TokenGroups:
    from PIL import Image

    model = create_backbone(backbone, pretrained=pretrained, checkpoint=checkpoint)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise ValueError(f"visualize draws sequence (ViT) backbones; {backbone} has no patch grid "
                         f"(grid-site drawings come with the grid methods)")
    if tuple(model.patch_embed.img_size) != (input_size, input_size):
        model = create_backbone(backbone, pretrained=pretrained, checkpoint=checkpoint,
                                img_size=input_size)
        grid = model.patch_embed.grid_size
    transform, config = eval_transform(model, input_size)
    with Image.open(image_path) as img:
        x = transform(img.convert("RGB"))[None]
    name, params = parse_method_spec(method)
    where = params.pop("where", None)
    handle = apply(model, name, where=where, **params)
    handle.reducer.trace_source = True      # every sequence site keeps [B, T, T0] membership
    with torch.inference_mode():
        model(x)
    source = handle.state.source
    handle.remove()
    gh, gw = grid
    prefix = model.num_prefix_tokens
    groups = np.full(gh * gw, -1, dtype=np.int64)
    if source is None:                      # nothing was reduced: every patch is its own token
        groups[:] = np.arange(gh * gw)
        n_tokens = gh * gw
    else:
        membership = source[0, :, prefix:].float()        # [T, patches]
        holders = membership.argmax(0)
        held = membership.sum(0) > 0
        groups[held.numpy()] = holders[held].numpy()
        n_tokens = int(source.shape[1] - prefix)
    mean = torch.tensor(config["mean"])[:, None, None]
    std = torch.tensor(config["std"])[:, None, None]
    image = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return TokenGroups(image, groups.reshape(gh, gw), input_size // gh, n_tokens)


def render(groups: TokenGroups) -> np.ndarray:
    """Each group filled with its mean colour, group borders dark, dropped patches grey."""
    image, patch = groups.image, groups.patch
    pixel_groups = np.kron(groups.groups, np.ones((patch, patch), dtype=np.int64))
    h, w = pixel_groups.shape
    image = image[:h, :w]
    out = np.empty_like(image)
    for g in np.unique(pixel_groups):
        mask = pixel_groups == g
        out[mask] = 0.5 if g < 0 else image[mask].mean(0)
    border = np.zeros((h, w), dtype=bool)
    border[:-1] |= pixel_groups[:-1] != pixel_groups[1:]
    border[:, :-1] |= pixel_groups[:, :-1] != pixel_groups[:, 1:]
    out[border] = 0.05
    return out


def visualize(backbone: str, method: str, image_path: str, out_path: str,
              input_size: int = 224, checkpoint: Optional[str] = None,
              pretrained: bool = False) -> TokenGroups:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = token_groups(backbone, method, image_path, input_size, checkpoint, pretrained)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    axes[0].imshow(groups.image)
    axes[0].set_title("input")
    axes[1].imshow(render(groups))
    dropped = int((groups.groups < 0).sum())
    axes[1].set_title(f"{method}: {groups.num_tokens} tokens"
                      + (f", {dropped} patches dropped" if dropped else ""))
    for ax in axes:
        ax.axis("off")
    fig.suptitle(backbone)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".tmp-" + os.path.basename(out_path))
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, out_path)
    return groups
