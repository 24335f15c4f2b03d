"""The `torch` scan backend's two CPU inference paths side by side, alone and inside whole models.

The backend scans d_state > 1 inputs step by step, in cache-sized time blocks, once one step's
state holds >= 4096 values, and it does so on one intra-op thread when a step is under torch's
parallel grain. Otherwise it runs the chunked scan. This script times, interleaved round-robin
in one process:

* ``chunked``: the chunked scan, forced;
* ``stepwise, pool``: the step-by-step scan on all intra-op threads;
* ``stepwise`` (the default): the step-by-step scan, one thread below the grain.

It times them on the scan shapes of ``selective_scan.py`` that have d_state 16, and on full
forwards of Vim-S (batch 1) and MedMamba-T (batch 8). It prints medians and each path's ratio
to ``chunked``.

    python benchmarks/scan_paths.py --threads 2 [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time

import torch

import tokenred
from tokenred.report import write_json

from _protocol import timing_environment
from selective_scan import make_inputs

scan_module = importlib.import_module("tokenred.kernels.selective_scan")
ALWAYS_STEPWISE = scan_module._STEPWISE_MIN_STATE
ONE_THREAD = scan_module._one_thread_below_grain


@contextlib.contextmanager
def _pool_threads(state_values):   # the stepwise scan without its one-thread rule
    yield


def use(path: str) -> None:
    scan_module._STEPWISE_MIN_STATE = 1 << 62 if path == "chunked" else ALWAYS_STEPWISE
    scan_module._one_thread_below_grain = _pool_threads if path == "stepwise, pool" else ONE_THREAD


PATHS = ("chunked", "stepwise, pool", "stepwise")
SCANS = [("scan L197 D768 N16 G1 (Vim-S), batch 1", 1, 768, 16, 197, 1),
         ("scan L3136 KD384 N16 G4, batch 1", 1, 384, 16, 3136, 4),
         ("scan L3136 KD384 N16 G4 (MedMamba-T stage 1), batch 8", 8, 384, 16, 3136, 4)]
MODELS = [("vim_small forward, batch 1", "vim_small", 1),
          ("medmamba_tiny forward, batch 8", "medmamba_tiny", 8)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--model-rounds", type=int, default=4)
    parser.add_argument("--no-models", action="store_true", help="the scans alone only")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    env = timing_environment(torch.device("cpu"), args.threads)
    print(f"torch scan inference paths, fp32, {env['device_name']}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, {env['allocator']}; medians of interleaved rounds")
    cases = []
    for label, batch, dim, n, length, groups in SCANS:
        x = make_inputs(batch, dim, n, length, torch.device("cpu"), groups)
        cases.append((label, args.rounds, lambda x=x: scan_module.scan_torch(**x, delta_softplus=True)))
    if not args.no_models:
        for label, name, batch in MODELS:
            model = tokenred.create_backbone(name, scan_backend="torch").eval()
            image = torch.randn(batch, 3, 224, 224)
            cases.append((label, args.model_rounds, lambda m=model, i=image: m(i)))
    rows = []
    with torch.inference_mode():
        for label, rounds, fn in cases:
            times = {p: [] for p in PATHS}
            for p in PATHS:       # warm-up per path
                use(p)
                fn()
            for _ in range(rounds):
                for p in PATHS:
                    use(p)
                    t0 = time.perf_counter()
                    fn()
                    times[p].append((time.perf_counter() - t0) * 1e3)
            use("stepwise")
            med = {p: statistics.median(t) for p, t in times.items()}
            paired = {p: statistics.median(c / s for c, s in zip(times["chunked"], times[p]))
                      for p in PATHS}
            rows.append({"case": label, "median_ms": med, "paired_speedup_vs_chunked": paired})
            cells = "  ".join(f"{p} {med[p]:9.2f} ms ({paired[p]:.2f}x)" for p in PATHS)
            print(f"{label:<55} {cells}")
    if args.json:
        write_json(args.json, {"args": vars(args), "env": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
