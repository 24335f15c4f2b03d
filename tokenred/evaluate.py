"""Accuracy and fidelity of reduced models on a folder of images, the same way for every method.

Data: an ImageFolder tree (ImageNet-val layout: one sub-folder per class, sorted class names give
the indices 0..C-1) or a flat folder of unlabeled images (then only the fidelity columns). Every
method of a backbone is evaluated on the same decoded batch, next to the unreduced model, so
agreement and KL compare outputs on identical inputs.

Per method: top-1 and top-5 accuracy (labeled data), agreement (share of images whose top-1 class
equals the unreduced model's) and mean KL(p_unreduced ‖ p_reduced) of the softmax outputs.
Counts are sums, so shards (several processes) add up exactly.

Images that fail to decode, and files or class folders that cannot be read, are skipped, counted
and named (never silently left out); a run with no readable image is an error. Decoding keeps an
image's meaning (``tokenred.images``: 16-bit PNGs scaled to 8 bit, EXIF orientation applied).
A limited evaluation (``limit``) takes a fixed class-balanced subset: the classes interleaved
round-robin in sorted order, so ``limit=500`` on a 10-class folder is 50 images of each class.
Each backbone's own eval transform is used: timm's ``resolve_data_config`` /
``create_transform`` on the model's ``pretrained_cfg`` (VMamba and MedMamba declare VMamba's
protocol there: short side 256 bicubic, center crop 224, ImageNet mean/std).
"""
from __future__ import annotations

import os
from dataclasses import astuple, dataclass, field, fields
from functools import cached_property
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fingerprint import images_digest
from .images import open_rgb
from .stats import mcnemar_exact_p, paired_bootstrap_ci

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


class DataError(ValueError):
    """The data folder cannot be evaluated (missing, empty, unreadable, labels out of range)."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


@dataclass
class ImageList:
    """Image paths with labels (``None`` for an unlabeled folder) and class names;
    ``unreadable``: (path, reason) of the files and folders that could not even be listed."""

    root: str
    paths: list[str]
    labels: Optional[list[int]]
    classes: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    subset: str = "all images"

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    @cached_property
    def digest(self) -> str:
        """What the images are, by content (file list, sizes, mtimes): the results store's key."""
        return images_digest(self.root, self.paths, self.labels, self.unreadable)

    def head(self, limit: Optional[int]) -> "ImageList":
        """A fixed subset of ``limit`` images: class-balanced for a labeled folder (classes
        interleaved round-robin, each in sorted order), the first ``limit`` sorted files of an
        unlabeled one."""
        if limit is None:
            return self
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DataError(f"limit={limit!r}: give a positive whole number of images")
        if limit >= len(self.paths):
            return self
        if self.labels is None:
            order = list(range(limit))
            subset = f"the first {limit} of {len(self.paths)} images in sorted order"
        else:
            by_class: dict[int, list[int]] = {}
            for i, label in enumerate(self.labels):
                by_class.setdefault(label, []).append(i)
            queues = [by_class[c] for c in sorted(by_class)]
            order = [q[r] for r in range(max(map(len, queues))) for q in queues if r < len(q)]
            order = sorted(order[:limit])
            subset = (f"{limit} of {len(self.paths)} images, class-balanced (classes interleaved "
                      f"round-robin in sorted order)")
        return ImageList(self.root, [self.paths[i] for i in order],
                         None if self.labels is None else [self.labels[i] for i in order],
                         self.classes, self.unreadable, subset)


def scan_folder(root: str | os.PathLike) -> ImageList:
    """Read ``root`` as an ImageFolder tree (class sub-folders) or a flat folder of images."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"data folder not found: {root}")
    try:
        entries = sorted(os.listdir(root))
    except OSError as exc:
        raise DataError(f"cannot read the data folder {root} ({exc.strerror}); check its "
                        f"permissions") from None
    classes = [e for e in entries if os.path.isdir(os.path.join(root, e)) and not e.startswith(".")]
    flat = [e for e in entries if os.path.isfile(os.path.join(root, e)) and _is_image(e)]
    if classes and flat:
        raise DataError(f"{root} holds both class folders ({classes[:3]}...) and loose images "
                        f"({flat[:3]}...); use one layout: class sub-folders (labeled) or only "
                        f"images (unlabeled)")
    unreadable: list[tuple[str, str]] = []

    def note(exc: OSError) -> None:   # os.walk drops unreadable folders silently otherwise
        unreadable.append((exc.filename or "?", f"{type(exc).__name__}: folder cannot be read "
                                                f"({exc.strerror})"))

    if classes:
        paths, labels = [], []
        for index, name in enumerate(classes):
            for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), onerror=note):
                dirnames.sort()
                for f in sorted(filenames):
                    if _is_image(f):
                        paths.append(os.path.join(dirpath, f))
                        labels.append(index)
        found = ImageList(root, paths, labels, classes, unreadable)
    else:
        found = ImageList(root, [os.path.join(root, f) for f in flat], None)
    if not found.paths and unreadable:
        raise DataError(f"no readable image in {root}: " + "; ".join(
            f"{p}: {why}" for p, why in unreadable[:3]))
    if not found.paths:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    return found


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: ImageList, transform: Callable):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images.paths)

    def __getitem__(self, i: int):
        label = -1 if self.images.labels is None else self.images.labels[i]
        try:
            tensor = self.transform(open_rgb(self.images.paths[i]))
        except Exception as exc:  # undecodable or truncated file: skipped and reported
            return None, label, i, f"{type(exc).__name__}: {exc}"
        return tensor, label, i, None


def _collate(items):
    good = [it for it in items if it[0] is not None]
    failed = [(it[2], it[3]) for it in items if it[0] is None]
    if not good:
        return None, None, failed
    return (torch.stack([it[0] for it in good]),
            torch.tensor([it[1] for it in good], dtype=torch.long), failed)


def eval_transform(model: nn.Module, input_size: int, overrides: Optional[Mapping[str, Any]] = None):
    """The model's own eval transform for ``input_size`` crops (timm's data config)."""
    from timm.data import create_transform, resolve_data_config

    args = {"input_size": (3, input_size, input_size), **dict(overrides or {})}
    config = resolve_data_config(args, model=model)
    return create_transform(**config, is_training=False), config


@dataclass
class EvalCounts:
    """Sums over images for one method (add shards with ``+``)."""

    n: int = 0
    correct1: int = 0
    correct5: int = 0
    agree: int = 0
    kl_sum: float = 0.0
    base_only: int = 0      # images the unreduced model gets right and this one wrong
    method_only: int = 0    # ... and the other way round (paired statistics of Δtop-1)

    def __add__(self, other: "EvalCounts") -> "EvalCounts":
        return EvalCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def metrics(self, labeled: bool) -> dict[str, float]:
        n = max(self.n, 1)
        out = {"agreement": 100.0 * self.agree / n, "kl": self.kl_sum / n}
        nan = float("nan")
        out["top1"] = 100.0 * self.correct1 / n if labeled else nan
        out["top5"] = 100.0 * self.correct5 / n if labeled else nan
        if labeled:
            low, high = paired_bootstrap_ci(self.n, self.base_only, self.method_only)
            out.update(delta_top1_ci_low=low, delta_top1_ci_high=high,
                       mcnemar_p=mcnemar_exact_p(self.base_only, self.method_only),
                       base_only=self.base_only, method_only=self.method_only)
        else:
            out.update(delta_top1_ci_low=nan, delta_top1_ci_high=nan, mcnemar_p=nan)
        return out


@dataclass
class EvalResult:
    counts: dict[str, EvalCounts]
    labeled: bool
    n_images: int
    failed: list[tuple[str, str]]          # (path, reason): undecodable images, unreadable
    data_config: dict                      # files and folders
    notes: list[str] = field(default_factory=list)   # what the report must say (class counts)


def batches(images: ImageList, transform: Callable, batch_size: int, num_workers: int,
            indices: Optional[Sequence[int]] = None) -> Iterator[tuple]:
    dataset = _Images(images, transform)
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=_collate)
    yield from loader


def evaluate(models: Mapping[str, nn.Module], baseline: str, images: ImageList, input_size: int,
             batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32,
             amp: bool = False, num_workers: int = 0,
             transform_overrides: Optional[dict] = None,
             progress: Optional[Callable[[int, int], None]] = None) -> EvalResult:
    """Evaluate every model of one backbone on the same batches; ``baseline`` (the unreduced
    model) is the reference for agreement and KL. ``progress(done, total)`` is called after
    every batch with the images done so far (this process's shard).

    Under ``torch.distributed`` (e.g. ``torchrun``) every process evaluates the images whose
    index ≡ its rank (mod world size) — each image exactly once, no padding duplicates — and the
    counts and failures are summed over processes, so every rank returns the full result."""
    rank, world = distributed_rank_world()
    indices = range(rank, len(images.paths), world) if world > 1 else None
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among the models {list(models)}")
    transform, config = eval_transform(models[baseline], input_size, transform_overrides)
    num_classes = getattr(models[baseline], "num_classes", None)
    if images.labeled and num_classes and len(images.classes) > num_classes:
        raise DataError(f"{images.root} has {len(images.classes)} classes but the model predicts "
                        f"{num_classes}; labels would be out of range")
    notes = []
    if images.labeled and num_classes and len(images.classes) != num_classes:
        notes.append(f"{images.root} has {len(images.classes)} classes but the model predicts "
                     f"{num_classes}: class folder i (sorted names) is read as the model's class i")
    counts = {name: EvalCounts() for name in models}
    failed: list[tuple[str, str]] = []
    seen, done = 0, 0
    total = len(indices) if indices is not None else len(images.paths)
    model_dtype = torch.float32 if amp else dtype
    autocast = torch.autocast(device.type, dtype=dtype) if amp else torch.autocast(device.type, enabled=False)
    for m in models.values():
        m.eval().to(device, model_dtype)
    with torch.inference_mode(), autocast:
        for x, y, bad in batches(images, transform, batch_size, num_workers, indices):
            failed.extend((images.paths[i], why) for i, why in bad)
            done += len(bad) + (0 if x is None else x.shape[0])
            if x is None:
                if progress is not None:
                    progress(done, total)
                continue
            x = x.to(device, model_dtype)
            y = y.to(device)
            seen += x.shape[0]
            ref_logp = F.log_softmax(models[baseline](x).float(), dim=-1)
            ref_top1 = ref_logp.argmax(-1)
            for name, model in models.items():
                logp = ref_logp if name == baseline else F.log_softmax(model(x).float(), dim=-1)
                c = counts[name]
                c.n += x.shape[0]
                top = logp.topk(min(5, logp.shape[-1]), dim=-1).indices
                c.agree += int((top[:, 0] == ref_top1).sum())
                c.kl_sum += float((ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp(min=0).sum())
                if images.labeled:
                    right, base_right = top[:, 0] == y, ref_top1 == y
                    c.correct1 += int(right.sum())
                    c.correct5 += int((top == y[:, None]).any(-1).sum())
                    c.base_only += int((base_right & ~right).sum())
                    c.method_only += int((right & ~base_right).sum())
            if progress is not None:
                progress(done, total)
    if world > 1:
        seen, failed = _all_reduce(counts, seen, failed, device)
    failed = sorted(failed + list(images.unreadable), key=lambda f: f[0])
    return EvalResult(counts, images.labeled, seen, failed, dict(config), notes)


def distributed_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(counts: dict[str, EvalCounts], seen: int, failed: list, device: torch.device):
    import torch.distributed as dist

    names = sorted(counts)
    # float64 keeps integer counts exact far beyond any dataset size
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    width = len(astuple(EvalCounts()))
    t = torch.tensor([list(astuple(counts[n])) for n in names] + [[seen] + [0] * (width - 1)],
                     dtype=torch.float64, device=comm_device)
    dist.all_reduce(t)
    for n, row in zip(names, t[:-1].tolist(), strict=True):
        counts[n] = EvalCounts(*(v if f.type == "float" else int(v)
                                 for v, f in zip(row, fields(EvalCounts), strict=True)))
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, failed)
    merged = sorted((f for part in gathered for f in part), key=lambda f: f[0])
    return int(t[-1, 0].item()), merged


def require_readable(result: EvalResult, root: str) -> None:
    if result.n_images == 0:
        reasons = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in result.failed[:3])
        raise DataError(f"no readable image in {root} ({len(result.failed)} failed to decode"
                        + (f": {reasons}" if reasons else "") + ")")
