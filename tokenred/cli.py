"""Command line: ``tokenred list`` and ``tokenred compare``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence


def _cmd_list(args: argparse.Namespace) -> int:
    import tokenred

    print("Methods (use as NAME or NAME:key=value,key=value; every method also takes where=...):")
    for name in tokenred.list_methods():
        cls = tokenred.get_method(name)
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        print(f"  {name:<14} [{', '.join(sorted(cls.kinds))}] {doc}")
        print(f"  {'':<14} default where: {cls.default_where_doc}")
        for pname, p in cls.params.items():
            print(f"  {'':<14} {pname}={p.default!r}: {p.doc}; allowed: {p.allowed}")
    print("\nBackbones:")
    names = tokenred.list_backbones()
    for name in names:
        entry = tokenred.registry.get_backbone(name)
        print(f"  {name:<28} {entry.family}: {entry.doc}")
    print("  any timm model name that builds a VisionTransformer (e.g. deit_small_patch16_224, "
          "vit_base_patch16_224, deit_small_distilled_patch16_224, vit_base_patch16_reg4_dinov2)")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import tokenred
    from tokenred.compare import (DEFAULT_BACKBONES, DEFAULT_METHODS, MethodSpec, as_list,
                                  as_method_list)
    from tokenred.report import markdown_table, write_run

    backbones = as_list(args.backbones) if args.backbones else list(DEFAULT_BACKBONES)
    methods = as_method_list(args.methods) if args.methods else list(DEFAULT_METHODS)
    specs = [MethodSpec.parse(m) for m in methods]  # fail on a bad spec before any work
    n_methods = len(specs) + (0 if any(s.is_baseline for s in specs) else 1)  # compare adds none
    rounds = min(args.rounds, args.iters) if args.iters else args.rounds
    per_backbone = 1 + 2 * n_methods + rounds * n_methods
    out_dir = args.out or os.path.join("reports", time.strftime("%Y%m%d-%H%M%S"))

    bar = tqdm(total=len(backbones) * per_backbone, disable=args.no_progress, unit="step",
               file=sys.stderr, dynamic_ncols=True)

    def progress(msg: str) -> None:
        bar.set_description(msg[:60])
        bar.update(1)

    checkpoints = {}
    for item in args.checkpoint:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise ValueError(f"--checkpoint {item!r}: write BACKBONE=PATH")
        checkpoints[name.strip()] = path.strip()
    overrides = {k: v for k, v in (("crop_pct", args.crop_pct),
                                   ("interpolation", args.interpolation)) if v is not None}
    try:
        df = tokenred.compare(backbones, specs, checkpoints=checkpoints, device=args.device,
                              batch_size=args.batch_size, input_size=args.input_size,
                              dtype=args.dtype, amp=args.amp, warmup=args.warmup,
                              iters=args.iters, rounds=args.rounds, threads=args.threads,
                              pretrained=args.pretrained, seed=args.seed, data=args.data,
                              limit=args.limit, num_workers=args.num_workers,
                              transform_overrides=overrides, progress=progress)
    finally:
        bar.close()
    print(markdown_table(df))
    paths = write_run(df, out_dir)
    print(f"wrote {paths['csv']} and {paths['md']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenred", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list methods (with parameters) and backbones")
    p.set_defaults(fn=_cmd_list)

    p = sub.add_parser("compare", help="measure methods on backbones and write a report",
                       description="With no arguments: random-init DeiT-S, synthetic images, CPU, "
                                   "methods none / tome:r=13 / random_drop.")
    p.add_argument("--backbones", help="comma-separated backbone names")
    p.add_argument("--methods", help="comma-separated specs: name or name:key=value,key=value, "
                                     "e.g. none,tome:r=13,prop_attn=false,random_drop:keep=0.5 "
                                     "(brackets keep commas inside values: tome:r=[8,8,4])")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 on CPU, 128 on CUDA")
    p.add_argument("--input-size", type=int, default=224, help="square image side (default 224)")
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    p.add_argument("--amp", action="store_true", help="fp32 weights under autocast to --dtype")
    p.add_argument("--warmup", type=int, default=None, help="untimed forwards (CPU 3, CUDA 50)")
    p.add_argument("--iters", type=int, default=None, help="timed forwards (CPU 10, CUDA 30)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--pretrained", action="store_true", help="load timm pretrained weights")
    p.add_argument("--checkpoint", action="append", default=[], metavar="BACKBONE=PATH",
                   help="local weights for a backbone (repeatable); .pth/.pt or .safetensors")
    p.add_argument("--seed", type=int, default=0, help="seed of random initialisation")
    p.add_argument("--data", metavar="DIR",
                   help="evaluate on these images: an ImageFolder tree (one folder per class, "
                        "sorted names = class indices; adds top-1/top-5) or a flat folder of "
                        "unlabeled images (agreement and KL with `none` only)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default 0)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="override the backbones' eval center-crop fraction (e.g. 0.875 = 256->224)")
    p.add_argument("--interpolation", default=None, help="override the eval resize interpolation "
                                                         "(bicubic, bilinear, ...)")
    p.add_argument("--out", help="run directory (default reports/<date-time>)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(fn=_cmd_compare)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "warmup", "iters", "rounds", "threads", "input_size", "limit"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}, "
                         f"got {value}")
    from tokenred.checkpoint import CheckpointError
    from tokenred.registry import RegistryError
    from tokenred.sites import UnsupportedModelError

    try:
        return args.fn(args)
    except (ValueError, RegistryError, UnsupportedModelError, CheckpointError,
            FileNotFoundError) as exc:
        # user errors (bad names, parameters, devices) end with one clear line, not a traceback
        print(f"tokenred: error: {exc}", file=sys.stderr)
        return 2
