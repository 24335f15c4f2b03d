"""Selective scan forward + backward (training): the `torch` backend's custom backward against
autograd through the sequential loop (`reference`), side by side in one run.

Shapes: L = 4096 and 1024 (a 64x64 / 32x32 map), d_state N = 1 (VMamba v2) and 16 (v0, MedMamba,
Vim), K·D channels, batch 1 by default. Both backends run on the same inputs, interleaved round
robin; a step is forward + backward of sum(y * g). Printed: median ms of each, the ratio
reference / torch, and the worst relative difference between the two backends' gradients (every
input and parameter gradient; the test suite checks the torch backward against the float64 loop).

    python benchmarks/scan_backward.py [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from tokenred.kernels import scan_cpp, scan_reference, scan_torch_autograd
from tokenred.report import write_json

from _protocol import timing_environment

SHAPES = [("L4096 KD192 N1", 192, 1, 4096), ("L4096 KD192 N16", 192, 16, 4096),
          ("L1024 KD384 N1", 384, 1, 1024), ("L1024 KD384 N16", 384, 16, 1024)]
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(batch: int, dim: int, n: int, length: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(u=torch.randn(batch, dim, length, generator=g),
                delta=0.5 * torch.randn(batch, dim, length, generator=g),
                A=-torch.exp(torch.rand(dim, n, generator=g) * 3 - 1),
                B=torch.randn(batch, 4, n, length, generator=g),
                C=torch.randn(batch, 4, n, length, generator=g),
                D=torch.randn(dim, generator=g), delta_bias=0.5 * torch.randn(dim, generator=g))


def step(fn, inputs: dict, grad_out: torch.Tensor) -> dict:
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = fn(**leaves, delta_softplus=True)
    (y * grad_out.to(y.dtype)).sum().backward()
    return {k: leaves[k].grad for k in NAMES}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json")
    args = p.parse_args()
    env = timing_environment(torch.device("cpu"), args.threads)
    print(f"{env['device_name']}, {torch.get_num_threads()} threads, torch {env['torch']}, "
          f"batch {args.batch_size}")
    rows = []
    for label, dim, n, length in SHAPES:
        inputs = make_inputs(args.batch_size, dim, n, length)
        grad_out = torch.randn(args.batch_size, dim, length, generator=torch.Generator().manual_seed(1))
        fns = {"torch": scan_torch_autograd, "reference": scan_reference}
        if scan_cpp.available():                # the compiled CPU kernel and its backward
            fns["cpp"] = scan_cpp.scan_cpp
        times = {name: [] for name in fns}
        grads = {}
        for _ in range(args.rounds):            # interleaved: all see the same machine state
            for name, fn in fns.items():
                t0 = time.perf_counter()
                grads[name] = step(fn, inputs, grad_out)
                times[name].append((time.perf_counter() - t0) * 1e3)
        err = {name: max(((grads[name][k] - grads["reference"][k]).abs().max()
                          / grads["reference"][k].abs().max()).item() for k in NAMES)
               for name in fns if name != "reference"}
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["reference"] / med["torch"]
        row = {"shape": label, "torch_ms": med["torch"], "reference_ms": med["reference"],
               "ratio": ratio, "max_rel_diff_grad": err["torch"]}
        cpp = ""
        if "cpp" in med:
            row.update(cpp_ms=med["cpp"], ratio_cpp=med["reference"] / med["cpp"],
                       max_rel_diff_grad_cpp=err["cpp"])
            cpp = (f"   cpp {med['cpp']:8.1f} ms {row['ratio_cpp']:6.1f}x (grad rel diff "
                   f"{err['cpp']:.1e})")
        rows.append(row)
        print(f"{label:<18} torch {med['torch']:9.1f} ms   loop {med['reference']:9.1f} ms   "
              f"{ratio:6.1f}x   max grad rel diff {err['torch']:.1e}{cpp}", flush=True)
    if args.json:
        write_json(args.json, {"env": env, "batch_size": args.batch_size, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
