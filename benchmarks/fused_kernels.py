"""A backbone with one of tokenred's fused CPU inference kernels against the same model with that
kernel turned off (the generic ops it replaces), side by side in one run, for each scan backend.

Kernels (``tokenred.kernels.fused``): ``conv1d`` is Vim's causal depthwise conv + SiLU as
shifted multiply-adds on time-major storage (off: ``nn.Conv1d``, channel-major); ``mlp`` is fc1 +
GELU as one oneDNN call (off: timm's MLP). Both models share their weights; timing is
interleaved round-robin (``tokenred.timing.benchmark_interleaved``), and the ratio off/on is the
median of the per-round ratios.

    python benchmarks/fused_kernels.py --threads 2                          # Vim-S, conv1d
    python benchmarks/fused_kernels.py --threads 2 --model vmamba_tiny_s1l8 --kernel mlp
"""
from __future__ import annotations

import importlib
import sys

import torch

import tokenred
from tokenred.kernels import scan_cpp
from tokenred.report import write_json
from tokenred.timing import benchmark_interleaved, paired_ratio

from _protocol import TimingDefaults, WithAttribute

PROTOCOL = TimingDefaults(cpu_batch=1, cuda_batch=128, cpu_warmup=3, cpu_iters=20, rounds=10)

#: kernel name -> (module, the name of its "applies" rule there)
KERNELS = {"conv1d": ("tokenred.backbones.vim", "causal_conv1d_silu_applies"),
           "mlp": ("tokenred.layers.mlp", "linear_gelu_applies")}


def main() -> int:
    parser = PROTOCOL.parser(__doc__.split("\n")[0])
    parser.add_argument("--model", default="vim_small")
    parser.add_argument("--kernel", choices=sorted(KERNELS), default="conv1d")
    args = parser.parse_args()
    if args.device != "cpu":
        parser.error("--device: the fused kernels serve CPU inference only; use cpu")
    _, batch, warmup, iters = PROTOCOL.resolve(args)
    backends = ["torch"] + (["cpp"] if scan_cpp.available() else [])
    module, rule = KERNELS[args.kernel]              # off: the kernel's rule answers no
    owner = importlib.import_module(module)
    torch.manual_seed(0)
    models = {}
    for backend in backends:
        model = tokenred.create_backbone(args.model, scan_backend=backend).eval()
        models[f"{backend}, {args.kernel} on"] = model
        models[f"{backend}, {args.kernel} off"] = WithAttribute(model, owner, rule,
                                                                lambda *_: False)
    res = benchmark_interleaved(models, 224, batch, "cpu", args.dtype, False, warmup, iters,
                                args.rounds, args.threads)
    env = next(iter(res.values())).env
    print(f"{args.model}, kernel {args.kernel}, batch {batch}, {env['dtype']}, "
          f"{env['device_name']}, {env['threads']} threads, torch {env['torch']}, {iters} timed "
          f"forwards in {args.rounds} interleaved rounds")
    rows = []
    for backend in backends:
        on, off = res[f"{backend}, {args.kernel} on"], res[f"{backend}, {args.kernel} off"]
        row = {"backend": backend, "on_ms": on.median_ms, "off_ms": off.median_ms,
               "off_over_on": off.median_ms / on.median_ms,
               "off_over_on_paired": paired_ratio(off, on)}
        rows.append(row)
        print(f"{backend:<6} on {on.median_ms:8.2f} ms (IQR {on.iqr_ms:.2f})  off "
              f"{off.median_ms:8.2f} ms (IQR {off.iqr_ms:.2f})  off/on {row['off_over_on']:.3f} "
              f"(paired {row['off_over_on_paired']:.3f})")
    if args.json:
        write_json(args.json, {"args": vars(args), "batch_size": batch, "env": env,
                               "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
