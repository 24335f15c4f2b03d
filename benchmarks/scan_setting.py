"""The `torch` scan with one of its module settings (a constant of
``tokenred.kernels.selective_scan``) at its value against another value, side by side in one
run, at the d_state-16 shapes of ``selective_scan.py`` and batch sizes, on ``cpu_math.py``'s
time-major inputs (as the backbones pass them, z gate included).

Each round times both settings, in alternating order, twice each: right after a pass over 48 MB
(inputs evicted from cache: "cold") and at once again ("warm"). Printed: medians and the median
of the per-round ratios value-now / value-given (above 1: the given value is faster).

    python benchmarks/scan_setting.py --threads 2 --set _STEPWISE_SMALL_BLOCK_ELEMENTS=262144
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import torch

from tokenred.report import write_json

from _protocol import attribute_replaced, timing_environment
from cpu_math import time_major_inputs
from selective_scan import SHAPES

SCAN = importlib.import_module("tokenred.kernels.selective_scan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", required=True, metavar="NAME=VALUE",
                        help="a module constant of tokenred.kernels.selective_scan and the "
                             "integer value to compare its current one with")
    parser.add_argument("--batch-sizes", default="1,2,8")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    name, _, text = args.set.partition("=")
    if not hasattr(SCAN, name) or not isinstance(getattr(SCAN, name), int):
        parser.error(f"--set: {name!r} is not an integer setting of "
                     f"tokenred.kernels.selective_scan")
    try:
        given = int(text)
    except ValueError:
        parser.error(f"--set: {text!r} is not an integer")
    env = timing_environment(torch.device("cpu"), args.threads)
    now = getattr(SCAN, name)
    print(f"{name}: now {now}, given {given}; {env['device_name']}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; median of {args.rounds} rounds")
    evict = torch.ones(12 << 20)
    rows = []
    with torch.inference_mode():
        for label, dim, n, length in (s for s in SHAPES if s[2] > 1):
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                x = time_major_inputs(batch, dim, n, length, 1 if "Vim" in label else 4)
                times = {(v, c): [] for v in ("now", "given") for c in ("cold", "warm")}
                for r in range(args.rounds + 1):
                    for variant in (("now", "given") if r % 2 else ("given", "now")):
                        value = now if variant == "now" else given
                        with attribute_replaced(SCAN, name, value):
                            for condition in ("cold", "warm"):
                                if condition == "cold":
                                    evict.mul_(1.0)
                                start = time.perf_counter()
                                SCAN.scan_torch(**x)
                                if r:             # (round 0 warms both up)
                                    times[variant, condition].append(
                                        (time.perf_counter() - start) * 1e3)
                row = {"shape": label, "batch": batch}
                for c in ("cold", "warm"):
                    now_ms, given_ms = times["now", c], times["given", c]
                    row[c] = {"now_ms": statistics.median(now_ms),
                              "given_ms": statistics.median(given_ms),
                              "now_over_given_paired": statistics.median(
                                  a / b for a, b in zip(now_ms, given_ms))}
                rows.append(row)
                print(f"{label:<30} batch {batch}: " + "  ".join(
                    f"{c} {row[c]['now_ms']:7.2f} / {row[c]['given_ms']:7.2f} ms "
                    f"(paired {row[c]['now_over_given_paired']:.3f})" for c in ("cold", "warm")))
    if args.json:
        write_json(args.json, {"args": vars(args), "env": env, "setting": name, "now": now,
                               "given": given, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
