"""Command line: ``tokenred list`` and ``tokenred compare``."""
from __future__ import annotations

import argparse
import json
import os
import sys
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
    from tokenred.presets import get_preset
    from tokenred.report import markdown_table, write_report

    explicit = args.backbones is not None or args.methods is not None or args.preset
    preset = get_preset(args.preset or "default") if (args.preset or not explicit) else {}
    for flag, value in (("--backbones", args.backbones), ("--methods", args.methods)):
        if value is not None and not as_list(value):
            raise ValueError(f"{flag} is empty; name at least one (see `tokenred list`), or leave "
                             f"the flag out for the defaults")
    backbones = (as_list(args.backbones) if args.backbones is not None
                 else list(preset.get("backbones", DEFAULT_BACKBONES)))
    methods = (as_method_list(args.methods) if args.methods is not None
               else list(preset.get("methods", DEFAULT_METHODS)))
    args.device = args.device or preset.get("device", "cpu")
    args.dtype = args.dtype or preset.get("dtype", "float32")
    args.batch_size = args.batch_size or preset.get("batch_size")
    if args.pretrained is None:
        args.pretrained = preset.get("pretrained", False)
    data = args.data if args.data is not None else preset.get("data")
    if data is None and preset.get("needs_data"):
        raise ValueError(f"preset {args.preset!r} needs --data DIR (the extracted test split)")
    specs = [MethodSpec.parse(m) for m in methods]  # fail on a bad spec before any work
    checkpoints = _pairs("--checkpoint", args.checkpoint, "BACKBONE=PATH")
    backbone_args = _backbone_args(args.backbone_args, backbones)
    overrides = {k: v for k, v in (("crop_pct", args.crop_pct),
                                   ("interpolation", args.interpolation),
                                   ("mean", _numbers("--mean", args.mean)),
                                   ("std", _numbers("--std", args.std))) if v is not None}
    out_dir = args.out or os.path.join("reports", "run-" + _arguments_digest(args, backbones, specs))
    device, rank = _init_distributed(args.device)
    _use_scan_backend(args.scan_backend, device)
    bar = tqdm(total=None, unit="step", disable=args.no_progress or rank != 0, file=sys.stderr,
               dynamic_ncols=True)
    started = []

    def progress(msg: str) -> None:
        if not started:   # settings passed their checks: say where results go, once
            started.append(True)
            bar.write(f"run directory {out_dir} (results store {out_dir}/results.sqlite; "
                      f"re-running the same command measures only what it lacks)", file=sys.stderr)
        if bar.total is not None:   # (a method refused while installing reports fewer steps)
            bar.total = max(bar.total, bar.n + 1)
        bar.set_description(msg[:60])
        bar.update(1)

    def planned(plan) -> None:   # the bar's length: what the store lacks, as compare plans it
        bar.total = bar.n + plan.steps
        bar.refresh()

    try:
        df = tokenred.compare(backbones, specs, checkpoints=checkpoints, device=device,
                              batch_size=args.batch_size, input_size=args.input_size,
                              dtype=args.dtype, amp=args.amp, warmup=args.warmup,
                              iters=args.iters, rounds=args.rounds, threads=args.threads,
                              pretrained=args.pretrained, seed=args.seed, data=data,
                              limit=args.limit, num_workers=args.num_workers,
                              eval_batch_size=args.eval_batch_size, backbone_kwargs=backbone_args,
                              transform_overrides=overrides, store=out_dir, progress=progress,
                              match=_match_targets(args), allow_resample=args.allow_resample,
                              log={k: v for k, v in vars(args).items() if k != "fn"},
                              compile=args.compile, on_plan=planned)
        if bar.total is not None:
            bar.update(bar.total - bar.n)   # (methods refused while installing: end at 100%)
    finally:
        bar.close()
        _finish_distributed()
    if rank != 0:
        return 0
    print(markdown_table(df))
    paths = write_report(df, out_dir)
    print(f"wrote {', '.join(v for k, v in paths.items() if k != 'plots')}"
          + (f" and {len(paths['plots'])} plot files" if paths.get("plots") else ""))
    return 0


def _use_scan_backend(name: Optional[str], device: str) -> None:
    """Make ``name`` the process-wide scan, after checking it can run on ``device``."""
    if name is None:
        return
    import torch

    from tokenred.kernels import ScanBackendError, resolve_backend, set_default_backend

    try:
        resolve_backend(name, torch.device(device))
    except ScanBackendError as exc:
        raise ValueError(f"--scan-backend {name}: {exc}") from None
    set_default_backend(name)


def _pairs(flag: str, items: Sequence[str], form: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise ValueError(f"{flag} {item!r}: write {form}")
        if name.strip() in out:
            raise ValueError(f"{flag}: {name.strip()!r} is given twice")
        out[name.strip()] = value.strip()
    return out


def _backbone_args(items: Sequence[str], backbones: list[str]) -> dict[str, dict]:
    """``--backbone-args NAME:key=value,...`` (repeatable) -> {NAME: {key: value}}."""
    from tokenred.params import ParameterError, parse_method_spec

    out: dict[str, dict] = {}
    for item in items:
        if ":" not in item:
            raise ValueError(f"--backbone-args {item!r}: write BACKBONE:key=value,key=value "
                             f"(e.g. deit_tiny_patch16_224:patch_size=4,num_classes=10)")
        try:
            name, kwargs = parse_method_spec(item)
        except ParameterError as exc:
            raise ValueError(f"--backbone-args {item!r}: {exc}") from None
        if name not in backbones:
            raise ValueError(f"--backbone-args for {name!r}, which is not among the backbones "
                             f"{backbones}")
        if not kwargs:
            raise ValueError(f"--backbone-args {item!r}: give at least one key=value")
        twice = sorted(set(kwargs) & set(out.get(name, {})))
        if twice:
            raise ValueError(f"--backbone-args: {twice} given twice for {name!r}")
        out.setdefault(name, {}).update(kwargs)   # repeating the flag for one backbone adds up
    return out


def _numbers(flag: str, text: Optional[str]) -> Optional[list]:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give one or three numbers, e.g. "
                         f"0.4914,0.4822,0.4465") from None


def _match_targets(args: argparse.Namespace) -> Optional[list]:
    """--match KIND=VALUE (one target) or --sweep KIND=V1,V2,... (one row per method per value)."""
    if args.match and args.sweep:
        raise ValueError("give --match or --sweep, not both")
    if args.match:
        return [args.match]
    if args.sweep:
        kind, eq, values = args.sweep.partition("=")
        if not eq or not values.strip():
            raise ValueError(f"--sweep {args.sweep!r}: write KIND=V1,V2,... (e.g. gflops=3.0,2.3)")
        return [f"{kind.strip()}={v.strip()}" for v in values.split(",") if v.strip()]
    return None


def _init_distributed(device: str) -> tuple[str, int]:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group (NCCL on CUDA, gloo on CPU)
    and give each process its own GPU. Returns (device, rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device, 0
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device, dist.get_rank()


def _finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _arguments_digest(args: argparse.Namespace, backbones: list, specs: list) -> str:
    """A short name for a run's settings: the same command always maps to the same run
    directory, so re-running it resumes from its store."""
    import hashlib
    import json

    settings = {k: v for k, v in vars(args).items()
                if k not in ("fn", "out", "no_progress", "debug")}   # how it is shown, not what
    settings.update(backbones=backbones, methods=[s.text for s in specs],
                    data=os.path.abspath(args.data) if args.data else None)
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _cmd_visualize(args: argparse.Namespace) -> int:
    from tokenred.visualize import visualize

    out = args.out or (os.path.splitext(os.path.basename(args.image))[0] + "-"
                       + "".join(c if c.isalnum() else "_" for c in args.method) + ".png")
    groups = visualize(args.backbone, args.method, args.image, out, args.input_size,
                       args.checkpoint, args.pretrained)
    if hasattr(groups, "sites"):
        print(f"wrote {out} ({len(groups.sites)} grid site(s): "
              + ", ".join(f"{g.site} {g.num_tokens}/{g.groups.size}" for g in groups.sites) + ")")
    else:
        print(f"wrote {out} ({groups.num_tokens} tokens from {groups.groups.size} patches)")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import hashlib

    from tokenred.search import markdown, search, write_report

    if args.rounds < 0:   # (--calibration is checked against the folder by search)
        raise ValueError("--rounds must be >= 0")
    text = json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in ("fn", "out")},
                      default=str)
    out = args.out or os.path.join("reports", "search-" + hashlib.sha256(text.encode()).hexdigest()[:10])
    from tqdm import tqdm

    # (how many steps a search takes depends on what it finds: the bar counts them; it appears
    # with the first step, so a setting refused before any work prints its one line alone)
    bars: list = []

    def show(msg: str) -> None:
        if not bars:
            bars.append(tqdm(total=None, unit="step", disable=args.no_progress,
                             file=sys.stderr, dynamic_ncols=True))
        bars[0].set_description(msg[:70])
        bars[0].update(1)

    try:
        result = search(args.backbone, args.method, args.data, budget=args.budget,
                        max_drop=args.max_drop, rates=args.rates, candidates=args.candidates,
                        calibration=args.calibration, validation=args.validation,
                        rounds=args.rounds, input_size=args.input_size,
                        pretrained=args.pretrained, checkpoint=args.checkpoint,
                        device=args.device, eval_batch_size=args.eval_batch_size, store=out,
                        progress=show)
    finally:
        for bar in bars:
            bar.close()
    print(markdown(result, args.backbone, args.method))
    paths = write_report(result, out, args.backbone, args.method)
    print("wrote " + ", ".join(paths))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from tokenred.report import table_from_store, write_report
    from tokenred.store import STORE_NAME, ResultsStore

    path = os.path.join(args.run_dir, STORE_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{args.run_dir} holds no results store ({STORE_NAME}); give the "
                                f"directory a `tokenred compare` run wrote")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    store = ResultsStore(path)
    try:
        df = table_from_store(store)
    finally:
        store.close()
    if df.empty:
        raise ValueError(f"{path} holds no measured rows yet")
    paths = write_report(df, args.run_dir, formats, plots=not args.no_plots)
    for value in paths.values():
        for item in (value if isinstance(value, list) else [value]):
            print(f"wrote {item}")
    return 0


def _default_description() -> str:
    """What a bare ``tokenred compare`` runs, read from the preset itself (never stale)."""
    from tokenred.presets import PRESETS

    preset = PRESETS["default"]
    return (f"With no arguments (preset 'default'): {' / '.join(preset['methods'])} on "
            f"{preset['doc']}.")


def build_parser() -> argparse.ArgumentParser:
    from tokenred.kernels.selective_scan import BACKENDS as SCAN_BACKENDS

    parser = argparse.ArgumentParser(prog="tokenred", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also TOKENRED_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list methods (with parameters) and backbones")
    p.set_defaults(fn=_cmd_list)

    p = sub.add_parser("compare", help="measure methods on backbones and write a report",
                       description=_default_description())
    p.add_argument("--backbones", help="comma-separated backbone names")
    p.add_argument("--methods", help="comma-separated specs: name or name:key=value,key=value, "
                                     "e.g. none,tome:r=13,prop_attn=false,random_drop:keep=0.5 "
                                     "(brackets keep commas inside values: tome:r=[8,8,4])")
    p.add_argument("--preset", default=None,
                   help="a published comparison (quartermap-paper, tome-paper) or a reference-"
                        "model comparison (pbc64, cifar10; see README); flags given explicitly "
                        "override it")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 on CPU, 128 on CUDA")
    p.add_argument("--input-size", type=int, default=None,
                   help="square image side (default: each backbone's own, e.g. 224 for the "
                        "ImageNet models, 64 for the reference models)")
    p.add_argument("--dtype", default=None, help="float32 (default), float16 or bfloat16")
    p.add_argument("--amp", action="store_true", help="fp32 weights under autocast to --dtype")
    p.add_argument("--warmup", type=int, default=None, help="untimed forwards (CPU 3, CUDA 50)")
    p.add_argument("--iters", type=int, default=None, help="timed forwards (CPU 10, CUDA 30)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true",
                   help="time torch.compile'd models (FLOPs and accuracy stay eager)")
    p.add_argument("--scan-backend", default=None, choices=SCAN_BACKENDS,
                   help="selective scan of the SSM backbones: auto (default: mamba_ssm on CUDA "
                        "when installed, else torch), torch, cpp (compiled CPU kernel, built on "
                        "first use), reference (the sequential loop), mamba_ssm")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="load the published weights (timm's, VMamba's release files); "
                        "--no-pretrained keeps random init even under a preset; a --checkpoint "
                        "for a backbone replaces its download")
    p.add_argument("--checkpoint", action="append", default=[], metavar="BACKBONE=PATH",
                   help="local weights for a backbone (repeatable); .pth/.pt or .safetensors")
    p.add_argument("--seed", type=int, default=0, help="seed of random initialisation")
    p.add_argument("--data", metavar="DIR",
                   help="evaluate on these images: an ImageFolder tree (one folder per class, "
                        "sorted names = class indices; adds top-1/top-5) or a flat folder of "
                        "unlabeled images (agreement and KL with `none` only)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate a fixed class-balanced subset of N images (classes interleaved "
                        "round-robin; the report says so)")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="evaluation batch (default 64 on CPU, the timing batch on CUDA): "
                        "evaluation runs at the model's throughput, not per-batch overhead")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default 0)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="override the backbones' eval center-crop fraction (e.g. 0.875 = 256->224)")
    p.add_argument("--interpolation", default=None,
                   help="override the eval resize interpolation (nearest, bilinear, bicubic, box, "
                        "hamming, lanczos)")
    p.add_argument("--mean", default=None, metavar="M[,M,M]",
                   help="override the eval normalisation mean (e.g. CIFAR-10's "
                        "0.4914,0.4822,0.4465)")
    p.add_argument("--std", default=None, metavar="S[,S,S]",
                   help="override the eval normalisation std (e.g. 0.2470,0.2435,0.2616)")
    p.add_argument("--backbone-args", action="append", default=[],
                   metavar="BACKBONE:key=value,...",
                   help="model arguments for one backbone (repeatable), e.g. "
                        "deit_tiny_patch16_224:patch_size=4,num_classes=10,img_size=32; "
                        "reports show them")
    p.add_argument("--allow-resample", action="store_true",
                   help="accept a checkpoint whose patch or position embedding must be resampled "
                        "to fit the model (refused otherwise; the report says which)")
    p.add_argument("--match", metavar="KIND=VALUE",
                   help="compare every method at a matched budget: gflops=3.0 (exact search on "
                        "the FLOP count), speedup=1.5 (measured, within 3%%) or keep=0.7 (methods "
                        "whose rate is a keep share); the table shows each solved value")
    p.add_argument("--sweep", metavar="KIND=V1,V2,...",
                   help="several matched budgets, one row per method per value (curves in the "
                        "accuracy-vs-GFLOPs/throughput plots), e.g. gflops=3.5,3.0,2.5,2.0")
    p.add_argument("--out", help="run directory holding the results store and report (default "
                                 "reports/run-<digest of the settings>: the same command resumes)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(fn=_cmd_compare)

    p = sub.add_parser("visualize", help="draw which patches each token holds after a method "
                                         "(ViTs), or each reduced grid site (VMamba, MedMamba)")
    p.add_argument("--backbone", default="deit_small_patch16_224")
    p.add_argument("--method", required=True, help="a method spec, e.g. tome:r=13")
    p.add_argument("--image", required=True, help="an image file")
    p.add_argument("--out", help="PNG to write (default <image>-<method>.png)")
    p.add_argument("--input-size", type=int, default=None,
                   help="default: the backbone's own (224; 64 for the reference models)")
    p.add_argument("--checkpoint", default=None, help="local weights for the backbone")
    p.add_argument("--pretrained", action="store_true",
                   help="pretrained weights (timm's; the reference models' bundled ones)")
    p.set_defaults(fn=_cmd_visualize)

    p = sub.add_parser("search", help="measure each site's sensitivity and search site sets "
                                      "and rates for a speed/FLOP budget or an accuracy floor")
    p.add_argument("--backbone", required=True)
    p.add_argument("--method", required=True,
                   help="a method name or spec without where= (e.g. quartermap, evit:fuse=false)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="labeled images (ImageFolder); split into calibration, validation and "
                        "held-out")
    p.add_argument("--budget", default=None, metavar="KIND=VALUE",
                   help="gflops=X (at most), speedup=Y (at least, timed) or latency_ms=Z")
    p.add_argument("--max-drop", type=float, default=None,
                   help="instead of --budget: the cheapest point losing at most this many top-1 "
                        "points on the validation split")
    p.add_argument("--rates", default=None, metavar="NAME=V1,V2",
                   help="rate values searched with the sites (default: a share-type rate on "
                        "0.5,0.7,0.9; else sites only)")
    p.add_argument("--candidates", default=None,
                   help="limit the sites tried (a where selector: stages:0-1, blocks:0-5)")
    p.add_argument("--calibration", type=int, default=256,
                   help="calibration images (class-balanced), on which the search runs")
    p.add_argument("--validation", type=int, default=None,
                   help="the next images of the same order, on which the front's points are "
                        "evaluated and the recommendation chosen (default: 1024 or half of what "
                        "calibration leaves, whichever is smaller; 0: choose on calibration); "
                        "every other image is held out")
    p.add_argument("--rounds", type=int, default=1, help="local-search rounds around the front")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="the backbone's pretrained or bundled weights (default on)")
    p.add_argument("--checkpoint", default=None, help="local weights for the backbone")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--out", default=None,
                   help="run directory for the store and report (default reports/search-<hash>)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=_cmd_search)

    p = sub.add_parser("report", help="regenerate a run's tables and plots from its results store")
    p.add_argument("run_dir", help="a run directory written by `tokenred compare`")
    p.add_argument("--format", default="md,csv,tex,html",
                   help="comma-separated: md, csv, tex, html (default all)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(fn=_cmd_report)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "warmup", "iters", "rounds", "threads", "input_size", "limit",
                 "eval_batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}, "
                         f"got {value}")
    from tokenred.checkpoint import CheckpointError
    from tokenred.registry import RegistryError
    from tokenred.sites import UnsupportedModelError

    from tokenred.store import StoreError
    from tokenred.timing import CompileError

    debug = args.debug or os.environ.get("TOKENRED_DEBUG", "") not in ("", "0")
    try:
        return args.fn(args)
    except (ValueError, RegistryError, UnsupportedModelError, CheckpointError, StoreError,
            CompileError,
            OSError) as exc:
        # what a user can cause (bad names, values, files, a full disk) ends in one clear line;
        # the traceback stays one flag away
        if debug:
            raise
        print(f"tokenred: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tokenred: interrupted; every measurement taken so far is kept in the run "
              "directory's store (re-run the same command to resume)", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, FileNotFoundError):
        where = exc.filename or ""
        text = f"{where}: {exc.strerror}" if where else exc.strerror
        if exc.errno == 28:
            text += " (free space and re-run: every committed measurement is kept)"
        elif exc.errno in (13, 30):
            text += " (give --out a directory you can write)"
        elif exc.errno in (17, 20, 21):
            text += " (give --out a directory path)"
        return text
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__
