"""Draw what a method does to a real image: which patches each token holds.

For sequence backbones (ViTs) the method runs with source tracking on; every final token's source
row says which original patches it holds. Merged groups (ToMe) are filled with their mean colour
and outlined; patches no token holds any more (random_drop) are greyed out. The panel beside it is
the model's input crop.

For grid backbones (VMamba, MedMamba) there is one panel per reduced grid site. The map cells that
take their value from the same scanned token after the restore form a group (QuarterMap: a 2x2
block; ToMe: a destination and the sources merged into it; random_drop with copy fill: a kept
position and the dropped ones after it), found by restoring token ids through the method's own
``restore``; cells no token reaches (random_drop with zero fill) are grey. Scanned positions are
marked with dots where the method says which they are (token subsets) or where they can be read
back from a content-independent regular-grid reduction (QuarterMap ``pick``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from .apply import apply
from .backbone import create_backbone, default_input_size
from .evaluate import eval_transform
from .params import parse_method_spec
from .reducer import Reducer
from .registry import get_method
from .sites import GridContext, ReducedGrid, adapter_for


@dataclass
class TokenGroups:
    """``groups``: [gh, gw] int map, the final token holding each patch (-1: dropped)."""

    image: np.ndarray          # [H, W, 3] float in [0, 1], the model's input crop
    groups: np.ndarray
    patch: int
    num_tokens: int


def _model_input(model: Any, image_path: str, input_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The image through the model's own eval transform ([1, 3, H, W]), and that crop as an
    [H, W, 3] array in [0, 1] for drawing."""
    from .evaluate import DataError
    from .images import open_rgb

    transform, config = eval_transform(model, input_size)
    if not os.path.isfile(image_path):
        raise FileNotFoundError(f"image not found: {image_path}")
    try:
        picture = open_rgb(image_path)
    except Exception as exc:   # PIL raises several types for undecodable files
        raise DataError(f"{image_path}: cannot be decoded as an image ({type(exc).__name__}: "
                        f"{exc})") from None
    x = transform(picture)[None]
    mean = torch.tensor(config["mean"])[:, None, None]
    std = torch.tensor(config["std"])[:, None, None]
    return x, (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def _built_size(model: Any) -> Optional[int]:
    """The input size a sequence backbone was built for (its position embedding's), if it says."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    size = getattr(model, "img_size", None) if size is None else size
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if isinstance(size, int) else None


def token_groups(backbone: str, method: str, image_path: str, input_size: int = 224,
                 checkpoint: Optional[str] = None, pretrained: bool = False,
                 model: Any = None) -> TokenGroups:

    if model is None:
        model = create_backbone(backbone, pretrained=pretrained, checkpoint=checkpoint)
    if _built_size(model) not in (None, input_size):
        model = create_backbone(backbone, pretrained=pretrained, checkpoint=checkpoint,
                                img_size=input_size)
    x, image = _model_input(model, image_path, input_size)
    name, params = parse_method_spec(method)
    where = params.pop("where", None)
    handle = apply(model, name, where=where, **params)
    handle.reducer.trace_source = True      # every sequence site keeps [B, T, T0] membership
    with torch.inference_mode():
        model(x)
    state = handle.state
    handle.remove()
    if state.patch_grid is None:
        raise ValueError(f"token_groups draws sequence backbones with a patch grid; {backbone} "
                         f"has none (grid backbones: grid_groups)")
    (gh, gw), columns, source = state.patch_grid, state.patch_columns, state.source
    groups = np.full(gh * gw, -1, dtype=np.int64)
    if source is None:                      # nothing was reduced: every patch is its own token
        groups[:] = np.arange(gh * gw)
        n_tokens = gh * gw
    else:
        membership = source[0][:, columns].float()        # [T, patches]
        holders = membership.argmax(0)
        held = membership.sum(0) > 0
        groups[held.numpy()] = holders[held].numpy()
        n_tokens = int(source.shape[1] - (source.shape[2] - len(columns)))
    return TokenGroups(image, groups.reshape(gh, gw), input_size // gh, n_tokens)


def render(groups: TokenGroups) -> np.ndarray:
    """Each group filled with its mean colour, group borders dark, dropped patches grey."""
    image, patch = groups.image, groups.patch
    pixel_groups = np.kron(groups.groups, np.ones((patch, patch), dtype=np.int64))
    h, w = pixel_groups.shape
    return _paint(image[:h, :w], pixel_groups)


def _paint(image: np.ndarray, pixel_groups: np.ndarray) -> np.ndarray:
    """Fill each group of pixels with its mean colour (negative ids grey), borders dark."""
    out = np.empty_like(image)
    for g in np.unique(pixel_groups):
        mask = pixel_groups == g
        out[mask] = 0.5 if g < 0 else image[mask].mean(0)
    border = np.zeros(pixel_groups.shape, dtype=bool)
    border[:-1] |= pixel_groups[:-1] != pixel_groups[1:]
    border[:, :-1] |= pixel_groups[:, :-1] != pixel_groups[:, 1:]
    out[border] = 0.05
    return out


@dataclass
class GridSiteGroups:
    """One grid site: ``groups`` [H, W] id of the scanned token each cell shows after the restore
    (-1: none), ``kept`` [(row, col)] positions the scan ran on where known."""

    site: str
    groups: np.ndarray
    kept: Optional[list]
    num_tokens: int


@dataclass
class GridGroups:
    image: np.ndarray
    sites: list

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.sites)


def _restored_ids(reduced: Any, batch: int) -> torch.Tensor:
    """Id + 1 of the scanned token every map cell receives (0: none), through ``restore``."""
    x = reduced.x
    # float32 holds every id exactly (maps have far fewer than 2**24 cells)
    ids = torch.arange(1, reduced.num_tokens + 1, dtype=torch.float32, device=x.device)
    return reduced.restore(ids.view(1, *x.shape[1:-1], 1).expand(batch, *x.shape[1:-1], 1))


class _Recorder(Reducer):
    """Runs another reducer unchanged and records, per site, which scanned token each cell of the
    restored map comes from."""

    def __init__(self, inner: Reducer):
        super().__init__()
        self.inner = inner
        self.name, self.kinds = inner.name, inner.kinds
        self.records: list[GridSiteGroups] = []

    def default_sites(self, sites):
        return self.inner.default_sites(sites)

    def prepare(self, sites) -> None:
        self.inner.prepare(sites)

    def begin_forward(self) -> None:
        self.records.clear()
        self.inner.begin_forward()

    def reduce_grid(self, x: torch.Tensor, ctx: GridContext) -> Any:
        reduced = self.inner.reduce_grid(x, ctx)
        height, width = int(x.shape[1]), int(x.shape[2])
        if not isinstance(reduced, ReducedGrid):
            groups = np.arange(height * width).reshape(height, width)
            self.records.append(GridSiteGroups(ctx.site.name, groups, None, height * width))
            return reduced
        ids = _restored_ids(reduced, int(x.shape[0]))[0, ..., 0].round().long() - 1
        kept = None
        if reduced.positions is not None:
            pos = reduced.positions if reduced.positions.dim() == 2 else reduced.positions[0]
            kept = [tuple(p) for p in pos.tolist()]
        else:   # a content-independent pick reads back as the flat ids of the kept cells
            flat = torch.arange(height * width, dtype=torch.float32).view(1, height, width, 1)
            probe = self.inner.reduce_grid(flat, ctx)
            values = probe.x.flatten() if isinstance(probe, ReducedGrid) else None
            if values is not None and torch.equal(values, values.round()):
                kept = [divmod(int(v), width) for v in values.tolist()]
        self.records.append(GridSiteGroups(ctx.site.name, ids.cpu().numpy(), kept,
                                           reduced.num_tokens))
        return reduced


def grid_groups(backbone: str, method: str, image_path: str, input_size: int = 224,
                checkpoint: Optional[str] = None, pretrained: bool = False,
                model: Any = None) -> GridGroups:
    """Run ``method`` on a grid backbone for one image and record every reduced site."""

    if model is None:
        model = create_backbone(backbone, pretrained=pretrained, checkpoint=checkpoint)
    x, image = _model_input(model, image_path, input_size)
    name, params = parse_method_spec(method)
    where = params.pop("where", None)
    recorder = _Recorder(get_method(name)(**params))
    with apply(model, recorder, where=where), torch.inference_mode():
        model(x)
    return GridGroups(image, list(recorder.records))


def render_grid(image: np.ndarray, site: GridSiteGroups) -> np.ndarray:
    """The site's groups over the image (a map cell covers image_size / map_size pixels)."""
    height, width = site.groups.shape
    cell_h, cell_w = image.shape[0] / height, image.shape[1] / width
    rows = np.minimum((np.arange(image.shape[0]) / cell_h).astype(int), height - 1)
    cols = np.minimum((np.arange(image.shape[1]) / cell_w).astype(int), width - 1)
    return _paint(image, site.groups[rows][:, cols])


def _save(fig: Any, out_path: str) -> None:
    import matplotlib.pyplot as plt

    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".tmp-" + os.path.basename(out_path))
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, out_path)
    except BaseException:   # a full disk leaves no half-written picture
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)


def _visualize_grid(backbone: str, method: str, image_path: str, out_path: str, input_size: int,
                    model: Any) -> GridGroups:
    import matplotlib.pyplot as plt

    groups = grid_groups(backbone, method, image_path, input_size, model=model)
    panels = 1 + len(groups.sites)
    ncols = min(panels, 4)
    nrows = -(-panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 4.3 * nrows), squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(groups.image)
    axes[0].set_title("input")
    size = groups.image.shape[0]
    for ax, site in zip(axes[1:], groups.sites, strict=False):
        ax.imshow(render_grid(groups.image, site))
        height, width = site.groups.shape
        if site.kept is not None and len(site.kept) <= 4096:
            ys = [(r + 0.5) * size / height for r, _ in site.kept]
            xs = [(c + 0.5) * size / width for _, c in site.kept]
            ax.scatter(xs, ys, s=max(1.0, 2000.0 / (height * width)), c="red", linewidths=0)
        ax.set_title(f"{site.site}: {site.num_tokens} of {height}x{width} scanned", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{backbone} · {method}")
    fig.tight_layout()
    _save(fig, out_path)
    return groups


def visualize(backbone: str, method: str, image_path: str, out_path: str,
              input_size: Optional[int] = None, checkpoint: Optional[str] = None,
              pretrained: bool = False) -> TokenGroups:
    """Draw ``method`` on ``backbone`` for one image; ``input_size`` None: the backbone's own
    (224 for the ImageNet models, 64 for the reference models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if input_size is None:
        input_size = default_input_size(backbone)
    model = create_backbone(backbone, pretrained=pretrained, checkpoint=checkpoint)
    if {s.kind for s in adapter_for(model).sites()} == {"grid"}:
        return _visualize_grid(backbone, method, image_path, out_path, input_size, model)
    groups = token_groups(backbone, method, image_path, input_size, checkpoint, pretrained, model)
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
    _save(fig, out_path)
    return groups



