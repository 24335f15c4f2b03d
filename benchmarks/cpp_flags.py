"""The compiled ``cpp`` scan built with its flags against a build with flags added or dropped, on
whole SSM forwards, side by side in one run (each build is its own extension module; every timed
forward runs with one of them in place of the other).

Both builds compute the same function (flags may only change float32 rounding: the tests check
the build in use); timing is interleaved round-robin (``tokenred.timing.benchmark_interleaved``)
and the ratio is the median of the per-round ratios.

    python benchmarks/cpp_flags.py --threads 2 --add=-mprefer-vector-width=512
    python benchmarks/cpp_flags.py --threads 2 --batch-size 8 --models vmamba_tiny_s1l8 --drop=-fopenmp
"""
from __future__ import annotations

import sys

import torch

import tokenred
from tokenred.kernels import scan_cpp
from tokenred.report import write_json
from tokenred.timing import benchmark_interleaved, paired_ratio

from _protocol import TimingDefaults, WithAttribute

PROTOCOL = TimingDefaults(cpu_batch=1, cuda_batch=1, cpu_warmup=3, cpu_iters=20, rounds=10)


def main() -> int:
    parser = PROTOCOL.parser(__doc__.split("\n")[0])
    parser.add_argument("--add", action="append", default=[], metavar="FLAG",
                        help="a compiler flag the other build adds (repeatable)")
    parser.add_argument("--drop", action="append", default=[], metavar="FLAG",
                        help="one of today's flags the other build leaves out (repeatable)")
    parser.add_argument("--models", default="vmamba_tiny_s1l8,medmamba_tiny,vim_small",
                        help="comma-separated SSM backbones, run with scan_backend='cpp'")
    args = parser.parse_args()
    if args.device != "cpu":
        parser.error("--device: the cpp scan runs on CPU only; use cpu")
    unknown = [f for f in args.drop if f not in scan_cpp._CFLAGS]
    if unknown or not (args.add or args.drop):
        parser.error(f"--drop: {' '.join(unknown)} not among today's flags "
                     f"({' '.join(scan_cpp._CFLAGS)})" if unknown else "give --add or --drop")
    _, batch, warmup, iters = PROTOCOL.resolve(args)
    other = tuple(f for f in scan_cpp._CFLAGS if f not in args.drop) + tuple(args.add)
    flags = {"today": scan_cpp._CFLAGS, "other": other}
    builds = {k: scan_cpp.build(v) for k, v in flags.items()}
    scan_cpp.load()                                   # (the default build, as `cpp` runs it)
    torch.manual_seed(0)
    models = {}
    for name in args.models.split(","):
        model = tokenred.create_backbone(name, scan_backend="cpp")
        for variant, module in builds.items():
            models[f"{name} ({variant})"] = WithAttribute(model, scan_cpp, "_module", module)
    res = benchmark_interleaved(models, 224, batch, "cpu", args.dtype, args.amp, warmup, iters,
                                args.rounds, args.threads)
    env = next(iter(res.values())).env
    print(f"batch {batch}, {env['dtype']}, {env['device_name']}, {env['threads']} threads, torch "
          f"{env['torch']}; flags today {' '.join(flags['today'])}; other {' '.join(other)}")
    ratios = {}
    for name in args.models.split(","):
        today, changed = res[f"{name} (today)"], res[f"{name} (other)"]
        ratios[name] = {"today_over_other": today.median_ms / changed.median_ms,
                        "today_over_other_paired": paired_ratio(today, changed)}
        print(f"{name:<22} today {today.median_ms:8.2f} ms  other {changed.median_ms:8.2f} ms  "
              f"today/other {ratios[name]['today_over_other']:.3f} "
              f"(paired {ratios[name]['today_over_other_paired']:.3f})")
    if args.json:
        write_json(args.json, {"args": vars(args), "batch_size": batch, "env": env,
                               "flags": flags, "ratios": ratios,
                               "results": {k: r.as_dict(env=False) for k, r in res.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
