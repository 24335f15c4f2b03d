"""The `torch` scan's exponentials under either machine rule, side by side on this machine: the
measurement behind ``tokenred.kernels.selective_scan.cpu_is_intel_with_mkl``. "intel_mkl": decays
by exp (torch's CPU exp is MKL's vector exp, fast on Intel CPUs only) and torch's softplus;
"other": decays by exp2 of Δ A log2 e (Sleef's, on every CPU) and the softplus in pieces.

First each function alone, on cache-sized tensors: exp against exp2, torch's softplus against the
pieces (in place). Then, for each shape of ``selective_scan.py`` (VMamba's stages, the Vim-S
shape, N = 16 at L = 3136), with time-major inputs as the backbones hand them over, the whole
scan under either rule, in alternating order, round after round. Printed: medians and the
median of the per-round ratios other/intel_mkl (> 1: the Intel rule is faster here). Last, whole
backbones (``--models``, batch ``--batch-size``) under either rule, interleaved with
``tokenred.timing.benchmark_interleaved``, with DeiT-S beside them for scale.

    python benchmarks/cpu_math.py --threads 2
    python benchmarks/cpu_math.py --threads 2 --models vim_small --batch-size 8
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import torch

import tokenred
from tokenred.report import write_json
from tokenred.timing import benchmark_interleaved, paired_ratio

from _protocol import WithAttribute, attribute_replaced, timing_environment
from selective_scan import SHAPES

scan_module = importlib.import_module("tokenred.kernels.selective_scan")


def time_major_inputs(batch: int, dim: int, n: int, length: int, groups: int) -> dict:
    """Scan inputs as VMamba and Vim hand them over: [b, D, L] views of time-major storage."""
    g = torch.Generator().manual_seed(0)

    def time_major(*shape):       # [L, b, ...] storage seen as [b, ..., L]
        t = torch.randn((length,) + shape, generator=g)
        return t.permute(*range(1, t.dim()), 0)
    return dict(u=time_major(batch, dim), delta=0.5 * time_major(batch, dim),
                A=-torch.exp(torch.rand(dim, n, generator=g) * 3 - 1),
                B=time_major(batch, groups, n), C=time_major(batch, groups, n),
                D=torch.randn(dim, generator=g), z=time_major(batch, dim),
                delta_bias=0.5 * torch.randn(dim, generator=g), delta_softplus=True)


RULES = ("intel_mkl", "other")


def rule_answer(rule: str):
    """A stand-in for ``cpu_is_intel_with_mkl`` that answers as ``rule`` would."""
    return lambda: rule == "intel_mkl"


def under_rule(rule: str, fn):
    """``fn`` run with the scan's exponentials that ``rule`` picks."""
    def run():
        with attribute_replaced(scan_module, "cpu_is_intel_with_mkl", rule_answer(rule)):
            return fn()
    return run


def alternating(calls: dict, rounds: int, repeat: int = 1) -> dict:
    """Per-call times (ms) of each entry of ``calls``, round-robin in alternating order."""
    times = {k: [] for k in calls}
    names = list(calls)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            for _ in range(repeat):
                calls[name]()
            times[name].append((time.perf_counter() - t0) * 1e3 / repeat)
    return times


def summary(times: dict) -> dict:
    """Medians, and the paired ratio of the second entry over the first."""
    first, second = times
    return {"median_ms": {k: statistics.median(v) for k, v in times.items()},
            "paired_ratio": statistics.median(b / a for a, b in zip(times[first], times[second]))}


def alone(args) -> list:
    """exp against exp2, and torch's softplus against the pieces, on 256K elements each."""
    n = 1 << 18
    x, out = -8 * torch.rand(n), torch.empty(n)
    src, buf = 12 * torch.rand(n) - 10, torch.empty(n)

    def softplus(rule):
        return under_rule(rule, lambda: scan_module._softplus(buf.copy_(src), inplace=True))
    rows = []
    for label, calls in (("exp, exp2", {"exp": lambda: torch.exp(x, out=out),
                                        "exp2": lambda: torch.exp2(x, out=out)}),
                         ("softplus: torch, pieces", {"torch": softplus("intel_mkl"),
                                                      "pieces": softplus("other")})):
        row = {"shape": f"{label} alone, {n} elements",
               **summary(alternating(calls, args.rounds, 20))}
        a, b = row["median_ms"]
        print(f"{label + ' alone, 256K':<36} {a} {row['median_ms'][a] * 1e3:7.1f} us  {b} "
              f"{row['median_ms'][b] * 1e3:7.1f} us  {b}/{a} {row['paired_ratio']:.2f}")
        rows.append(row)
    return rows


def whole_models(names: list, args) -> list:
    """Each backbone under both rules (the same weights), and DeiT-S, timed interleaved."""
    torch.manual_seed(0)
    models = {"deit_small_patch16_224": tokenred.create_backbone("deit_small_patch16_224")}
    for name in names:
        model = tokenred.create_backbone(name, scan_backend="torch")
        models.update({f"{name} ({rule})": WithAttribute(model, scan_module,
                                                          "cpu_is_intel_with_mkl",
                                                          rule_answer(rule))
                       for rule in RULES})
    res = benchmark_interleaved(models, 224, args.batch_size, "cpu", "float32", False,
                                args.warmup, args.iters, args.model_rounds, args.threads)
    deit = res["deit_small_patch16_224"]
    rows = []
    for name in names:
        intel, other = res[f"{name} (intel_mkl)"], res[f"{name} (other)"]
        row = {"model": name, "batch": args.batch_size, "deit_ms": deit.median_ms,
               "median_ms": {"intel_mkl": intel.median_ms, "other": other.median_ms},
               "paired_ratio": paired_ratio(other, intel),
               "x_deit": {"intel_mkl": paired_ratio(intel, deit),
                          "other": paired_ratio(other, deit)}}
        rows.append(row)
        print(f"{name + f' batch {args.batch_size}':<36} intel_mkl {intel.median_ms:8.2f} ms "
              f"({row['x_deit']['intel_mkl']:.2f}x DeiT-S)  other {other.median_ms:8.2f} ms "
              f"({row['x_deit']['other']:.2f}x)  other/intel_mkl {row['paired_ratio']:.2f}"
              f"  (DeiT-S {deit.median_ms:.2f} ms)")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default="vmamba_tiny_s1l8,vim_small,medmamba_tiny",
                        help="comma-separated backbones to time whole under either rule "
                             "('' for none)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--model-rounds", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    names = [m for m in args.models.split(",") if m]
    env = timing_environment(torch.device("cpu"), args.threads)
    print(f"the torch scan's exponentials by rule, batch {args.batch_size}, fp32, "
          f"{env['device_name']}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"MKL {torch.backends.mkl.is_available()}, CPU vendor {scan_module.cpu_vendor() or '?'}; "
          f"this machine's rule: {env['scan_math']}; median of {args.rounds} rounds")
    with torch.inference_mode():
        rows = alone(args)
        for label, dim, n, length in SHAPES:
            inputs = time_major_inputs(args.batch_size, dim, n, length, 1 if "Vim" in label else 4)
            scan = (lambda inputs=inputs: scan_module.scan_torch(**inputs))
            calls = {rule: under_rule(rule, scan) for rule in RULES}
            y_intel, y_other = (calls[rule]() for rule in RULES)
            agree = ((y_intel - y_other).abs().max() / y_other.abs().max()).item()
            row = {"shape": label, "KD": dim, "N": n, "L": length,
                   **summary(alternating(calls, args.rounds)), "max_rel_difference": agree}
            rows.append(row)
            print(f"{label:<36} intel_mkl {row['median_ms']['intel_mkl']:8.2f} ms  other "
                  f"{row['median_ms']['other']:8.2f} ms  other/intel_mkl {row['paired_ratio']:.2f}"
                  f"  (outputs differ by {agree:.1e})")
    rows += whole_models(names, args) if names else []
    if args.json:
        write_json(args.json, {"args": vars(args), "env": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
