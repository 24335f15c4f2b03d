"""DeiT-S: cost of the hook machinery (`none` installed vs the untouched model) and ToMe's speedup.

Three copies of the same random-init DeiT-S are timed round-robin in one process (so machine
drift hits all alike): the plain timm model, the model with `none` installed on every block, and
ToMe r=13. Prints medians, IQRs and the ratios; ``--json`` also writes them to a file.

    python benchmarks/vit_overhead_and_tome.py                      # CPU, batch 8
    python benchmarks/vit_overhead_and_tome.py --device cuda --batch-size 256
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

import tokenred
from tokenred.report import atomic_write_text
from tokenred.timing import benchmark_interleaved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="deit_small_patch16_224")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="CPU 8, CUDA 256 (ToMe's)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--r", type=int, default=13)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    batch = args.batch_size or (256 if cuda else 8)
    warmup = args.warmup if args.warmup is not None else (50 if cuda else 3)
    iters = args.iters or (100 if cuda else 40)

    torch.manual_seed(0)
    plain = tokenred.create_backbone(args.backbone)
    none = copy.deepcopy(plain)
    tome = copy.deepcopy(plain)
    tokenred.apply(none, "none")
    tokenred.apply(tome, "tome", r=args.r)
    models = {"plain": plain, "none": none, f"tome r={args.r}": tome}
    gflops = {name: tokenred.count_flops(m, 224).gflops for name, m in models.items()}
    res = benchmark_interleaved(models, 224, batch, args.device, args.dtype, args.amp, warmup,
                                iters, args.rounds)
    env = res["plain"].env
    print(f"{args.backbone}, batch {batch}, {env['dtype']}{'+amp' if args.amp else ''}, "
          f"{env['device_name']} ({env['device']}), {env['threads']} threads, torch "
          f"{env['torch']}, {iters} timed iters in {args.rounds} interleaved rounds")
    print(f"{'model':<12} {'GFLOPs':>7} {'median ms':>10} {'IQR ms':>8} {'img/s':>9}")
    for name, r in res.items():
        print(f"{name:<12} {gflops[name]:>7.3f} {r.median_ms:>10.2f} {r.iqr_ms:>8.2f} "
              f"{r.images_per_s:>9.1f}")
    tome_name = f"tome r={args.r}"
    ratios = {
        "none_vs_plain_latency": res["none"].median_ms / res["plain"].median_ms,
        "tome_speedup_vs_none": res[tome_name].images_per_s / res["none"].images_per_s,
        "tome_speedup_vs_plain": res[tome_name].images_per_s / res["plain"].images_per_s,
    }
    print(f"none/plain latency ratio: {ratios['none_vs_plain_latency']:.3f}x (target <= 1.01)")
    print(f"tome speedup vs none:     {ratios['tome_speedup_vs_none']:.2f}x")
    print(f"tome speedup vs plain:    {ratios['tome_speedup_vs_plain']:.2f}x")
    if args.json:
        payload = {"args": vars(args), "batch_size": batch, "env": env, "gflops": gflops,
                   "ratios": ratios,
                   "results": {k: {f: v for f, v in r.as_dict().items() if f != "env"}
                               for k, r in res.items()}}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
