"""One SSM backbone (its ``torch`` scan) against DeiT-S, timed interleaved, with only the API that
every tokenred version since the issue-14 start has (``create_backbone``,
``timing.benchmark_interleaved``): run with an older checkout first on ``PYTHONPATH`` to compare
that code with today's on the same machine, each normalised by its own DeiT-S run
(``old_vs_new.sh`` sets this up).

    python benchmarks/old_vs_new.py medmamba_tiny 8 --iters 5 --label today
"""
from __future__ import annotations

import argparse
import sys

import torch

import tokenred
from tokenred.timing import benchmark_interleaved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backbone")
    parser.add_argument("batch_size", type=int)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = {"deit_small": tokenred.create_backbone("deit_small_patch16_224"),
              args.backbone: tokenred.create_backbone(args.backbone, scan_backend="torch")}
    res = benchmark_interleaved(models, 224, args.batch_size, "cpu", warmup=2, iters=args.iters,
                                rounds=args.iters)
    deit, ssm = res["deit_small"].median_ms, res[args.backbone].median_ms
    print(f"{args.label:<28} {tokenred.__file__}: {args.backbone} b{args.batch_size} "
          f"{ssm:8.1f} ms, DeiT-S {deit:7.1f} ms, ratio {ssm / deit:.2f}; allocator: "
          f"{res[args.backbone].env.get('allocator', 'not recorded (older code)')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
