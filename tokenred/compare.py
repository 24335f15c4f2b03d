"""``tokenred.compare``: every method on every backbone, measured the same way, as one table."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import pandas as pd
import torch

from .apply import UnsupportedSiteKindError, apply
from .backbone import create_backbone
from .checkpoint import load_checkpoint
from .evaluate import evaluate, require_readable, scan_folder
from .flops import count_flops, count_params
from .params import ParameterError, parse_method_spec, split_method_list, split_top_level
from .registry import get_backbone, get_method
from .timing import benchmark_interleaved, resolve_device, resolve_dtype

DEFAULT_BACKBONES = ("deit_small_patch16_224", "vmamba_tiny_s1l8")
DEFAULT_METHODS = ("none", "tome:r=13", "random_drop")

COLUMNS = ["backbone", "method", "params", "n_params", "gflops", "flop_reduction_pct",
           "images_per_s", "speedup", "latency_median_ms", "latency_iqr_ms", "tokens_out",
           "top1", "top5", "delta_top1", "agreement", "kl", "eval_images", "eval_failed",
           "batch_size", "input_size", "dtype", "device", "device_name", "threads", "torch",
           "timm", "tokenred"]


@dataclass(frozen=True)
class MethodSpec:
    text: str            # as the user wrote it
    name: str
    params: dict

    @classmethod
    def parse(cls, spec: Union[str, "MethodSpec"]) -> "MethodSpec":
        if isinstance(spec, MethodSpec):
            return spec
        name, params = parse_method_spec(spec)
        method = get_method(name)          # unknown names fail here, with close matches
        probe = dict(params)
        probe.pop("where", None)
        method(**probe)                    # bad parameters fail before anything is measured
        return cls(spec.strip(), name, params)

    @property
    def is_baseline(self) -> bool:
        """Plain ``none``: the row every other method on the backbone is compared with."""
        return self.name == "none" and not self.params

    @property
    def params_text(self) -> str:
        return self.text.partition(":")[2]


def as_list(value: Union[str, Sequence[Any]]) -> list:
    if isinstance(value, str):
        return split_top_level(value)
    return list(value)


def as_method_list(value: Union[str, Sequence[Any]]) -> list:
    return split_method_list(value) if isinstance(value, str) else list(value)


def _build_backbone(name: str, input_size: int, pretrained: bool, seed: int,
                    checkpoint: Optional[str], kwargs: dict) -> torch.nn.Module:
    """Build ``name`` with seeded random init; a timm ViT made for another resolution is rebuilt
    for ``input_size`` (timm resamples pretrained position embeddings)."""
    torch.manual_seed(seed)
    model = create_backbone(name, pretrained=pretrained, **kwargs)
    grid = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if (get_backbone(name) is None and "img_size" not in kwargs and grid is not None
            and tuple(grid) != (input_size, input_size)):
        torch.manual_seed(seed)
        model = create_backbone(name, pretrained=pretrained, img_size=input_size, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def compare(backbones: Union[str, Sequence[str]] = DEFAULT_BACKBONES,
            methods: Union[str, Sequence[str]] = DEFAULT_METHODS, *,
            device: str = "cpu", batch_size: Optional[int] = None,
            input_size: int = 224, dtype: str = "float32", amp: bool = False,
            warmup: Optional[int] = None, iters: Optional[int] = None, rounds: int = 5,
            threads: Optional[int] = None, pretrained: bool = False, seed: int = 0,
            checkpoints: Optional[dict] = None, backbone_kwargs: Optional[dict] = None,
            data: Optional[str] = None, limit: Optional[int] = None, num_workers: int = 0,
            transform_overrides: Optional[dict] = None,
            progress: Optional[Callable[[str], None]] = None) -> pd.DataFrame:
    """Measure ``methods`` (``"name"`` or ``"name:key=value,..."``) on ``backbones``.

    Each method runs on its own copy of the same backbone weights; ``none`` (added first when
    missing) is the baseline for FLOP reduction and speedup. Timing is interleaved round-robin
    across the methods of one backbone. Defaults: on CPU batch 8, 3 warm-up + 10 timed forwards;
    on CUDA batch 128, 50 warm-up + 30 timed (VMamba's protocol). ``checkpoints`` maps backbone
    names to local weight files; timm models are built for ``input_size``. ``progress`` is called
    with a short message at each step. A method that cannot serve a backbone's site kinds (a
    sequence-only method on VMamba) is skipped there and listed in ``df.attrs["skipped"]``.

    ``data``: a folder of images (ImageFolder tree, or flat and unlabeled) to evaluate every method
    on with the backbone's own eval transform (``limit``: the first N images): top-1/top-5 (labeled
    data), Δtop-1 against ``none``, agreement with ``none``'s top-1 and mean KL(none ‖ method).
    Images that fail to decode are skipped and listed in ``df.attrs["failed_images"]``.
    """
    dev = resolve_device(device)
    on_gpu = dev.type == "cuda"
    batch_size = (128 if on_gpu else 8) if batch_size is None else batch_size
    warmup = (50 if on_gpu else 3) if warmup is None else warmup
    iters = (30 if on_gpu else 10) if iters is None else iters
    backbone_names = as_list(backbones)
    specs = [MethodSpec.parse(m) for m in as_method_list(methods)]
    if not backbone_names or not specs:
        raise ParameterError("compare needs at least one backbone and one method")
    if not any(s.is_baseline for s in specs):
        specs.insert(0, MethodSpec("none", "none", {}))
    if len({s.text for s in specs}) != len(specs):
        raise ParameterError(f"a method is listed twice: {[s.text for s in specs]}")
    checkpoints = dict(checkpoints or {})
    unknown = sorted(set(checkpoints) - set(backbone_names))
    if unknown:
        raise ParameterError(f"checkpoint given for {unknown}, which is not among the backbones "
                             f"{backbone_names}")

    images = scan_folder(data).head(limit) if data is not None else None
    if num_workers < 0:
        raise ParameterError(f"num_workers={num_workers}: give 0 or more")
    report = progress or (lambda msg: None)
    rows, skipped, failed_images = [], [], []
    for bname in backbone_names:
        report(f"{bname}: build")
        base = _build_backbone(bname, input_size, pretrained, seed, checkpoints.get(bname),
                               dict(backbone_kwargs or {}))
        n_params = count_params(base)
        models, handles, flops = {}, {}, {}
        runnable = []
        for spec in specs:
            model = copy.deepcopy(base)
            params = dict(spec.params)
            where = params.pop("where", None)
            try:
                handles[spec.text] = apply(model, spec.name, where=where, **params)
            except UnsupportedSiteKindError as exc:
                # a method that cannot serve this backbone's site kinds is a gap in the table,
                # not a failure of the whole comparison
                skipped.append({"backbone": bname, "method": spec.text, "reason": str(exc)})
                report(f"{bname} {spec.text}: not supported, skipped")
                continue
            runnable.append(spec)
            report(f"{bname} {spec.text}: count FLOPs")
            flops[spec.text] = count_flops(model, input_size)
            models[spec.text] = model
        del base
        results = benchmark_interleaved(models, input_size, batch_size, dev, dtype, amp, warmup,
                                        iters, rounds, threads,
                                        progress=lambda m, b=bname: report(f"{b} {m}"))
        base_text = next(s.text for s in specs if s.is_baseline)
        g0, ips0 = flops[base_text].gflops, results[base_text].images_per_s
        metrics: dict[str, dict] = {t: {} for t in models}
        if images is not None:
            report(f"{bname}: evaluate on {len(images.paths)} images")
            ev = evaluate(models, base_text, images, input_size, batch_size, dev,
                          resolve_dtype(dtype), amp, num_workers, transform_overrides)
            require_readable(ev, images.root)
            if not failed_images:
                failed_images = ev.failed
            top1_base = ev.counts[base_text].metrics(ev.labeled)["top1"]
            for text, c in ev.counts.items():
                m = c.metrics(ev.labeled)
                metrics[text] = {**m, "delta_top1": m["top1"] - top1_base,
                                 "eval_images": ev.n_images, "eval_failed": len(ev.failed)}
        for spec in runnable:
            res, g = results[spec.text], flops[spec.text].gflops
            tokens = handles[spec.text].state.tokens
            env = res.env
            rows.append({
                "backbone": bname, "method": spec.name, "params": spec.params_text,
                "n_params": n_params, "gflops": g, "flop_reduction_pct": 100.0 * (1 - g / g0),
                "images_per_s": res.images_per_s, "speedup": res.images_per_s / ips0,
                "latency_median_ms": res.median_ms, "latency_iqr_ms": res.iqr_ms,
                "tokens_out": list(tokens.values())[-1] if tokens else None,
                "batch_size": batch_size, "input_size": input_size, "dtype": env["dtype"]
                + ("+amp" if amp else ""), "device": env["device"],
                "device_name": env["device_name"], "threads": env["threads"],
                "torch": env["torch"], "timm": env["timm"], "tokenred": env["tokenred"],
                **metrics[spec.text],
            })
        for h in handles.values():
            h.remove()
        del models
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["skipped"] = skipped
    df.attrs["failed_images"] = failed_images
    return df
