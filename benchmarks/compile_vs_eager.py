"""torch.compile against eager, per backbone and reduction method: the same model (method
installed) timed eager and compiled side by side in one interleaved run. A pair that does not
compile is reported with the reason, not skipped silently.

    python benchmarks/compile_vs_eager.py                         # CPU, batch 1, the default pairs
    python benchmarks/compile_vs_eager.py --pairs deit_small_patch16_224=tome:r=13
"""
from __future__ import annotations

import copy
import sys
import time

import torch

import tokenred
from tokenred.params import parse_method_spec
from tokenred.report import write_json
from tokenred.timing import benchmark_interleaved, paired_ratio

from _protocol import TimingDefaults

PROTOCOL = TimingDefaults(cpu_batch=1, cuda_batch=128, cpu_warmup=3, cpu_iters=20, rounds=5)
DEFAULT_PAIRS = ("deit_small_patch16_224=none", "deit_small_patch16_224=tome:r=13",
                 "vmamba_tiny_s1l8=none", "vmamba_tiny_s1l8=quartermap",
                 "vim_small=none", "vim_small=topvim")


def main() -> int:
    parser = PROTOCOL.parser(__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=",".join(DEFAULT_PAIRS),
                        help="comma-separated BACKBONE=METHOD_SPEC (method specs without commas)")
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args()
    cuda, batch, warmup, iters = PROTOCOL.resolve(args)
    rows = []
    for pair in args.pairs.split(","):
        bname, _, spec = pair.partition("=")
        torch.manual_seed(0)
        model = tokenred.create_backbone(bname).eval()
        if spec != "none":
            name, params = parse_method_spec(spec)
            tokenred.apply(model, name, **params)
        row = {"backbone": bname, "method": spec}
        try:
            compiled = torch.compile(copy.deepcopy(model) if spec == "none" else model)
            t0 = time.perf_counter()
            with torch.inference_mode():
                compiled(torch.randn(batch, 3, args.input_size, args.input_size))
            row["compile_s"] = time.perf_counter() - t0
            res = benchmark_interleaved({"eager": model, "compiled": compiled}, args.input_size,
                                        batch, args.device, args.dtype, args.amp, warmup, iters,
                                        args.rounds, args.threads)
            row.update(eager_ms=res["eager"].median_ms, compiled_ms=res["compiled"].median_ms,
                       speedup=res["eager"].median_ms / res["compiled"].median_ms,
                       speedup_paired=1 / paired_ratio(res["compiled"], res["eager"]))
            env = res["eager"].env
            print(f"{bname:<26} {spec:<18} eager {row['eager_ms']:8.1f} ms  compiled "
                  f"{row['compiled_ms']:8.1f} ms  {row['speedup']:5.2f}x (paired "
                  f"{row['speedup_paired']:.2f}x), compile {row['compile_s']:.0f} s", flush=True)
        except Exception as exc:   # a backend/graph failure is a result here
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            env = None
            print(f"{bname:<26} {spec:<18} does not compile: {row['error']}", flush=True)
        row["env"] = env
        rows.append(row)
    if args.json:
        write_json(args.json, {"args": vars(args), "batch_size": batch, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
