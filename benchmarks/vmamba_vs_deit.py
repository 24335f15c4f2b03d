"""An SSM backbone (VMamba-T[s1l8] by default, or Vim, MedMamba) vs DeiT-S: one full forward
each, timed side by side in one run.

The two have about the same FLOPs (4.91 vs 4.61 GMACs); the official VMamba runs only with custom
CUDA kernels and its CPU fallback (a sequential scan loop) took 10.8x a DeiT-S forward on a quiet
2-core machine. Here: DeiT-S, VMamba-T with the ``torch`` scan backend, and (CPU, by default)
VMamba-T with the ``cpp`` scan (``auto``'s choice on CPU where it builds: the header line names
the default), with the ``reference`` sequential loop, which follows the official
fallback's pattern, and a control: DeiT-S with the fused MLP VMamba's CPU inference uses (so the
gain that fusion would give a ViT too is visible, not hidden in the ratio).
Everything around the scan (LayerNorms, projections, depthwise conv, layout changes) counts.
Timing is interleaved round-robin (tokenred.timing.benchmark_interleaved); ratios are of medians
and, paired, the median of per-round ratios.

    python benchmarks/vmamba_vs_deit.py                                  # CPU, batch 1
    python benchmarks/vmamba_vs_deit.py --device cuda --batch-size 128   # VMamba's GPU protocol
    python benchmarks/vmamba_vs_deit.py --ssm vim_small --batch-size 8   # Vim-S (5.9 GMACs)
"""
from __future__ import annotations

import copy
import sys

import torch
from timm.layers import Mlp as TimmMlp

import tokenred
from tokenred.kernels import mamba_ssm_available, scan_cpp, scan_triton
from tokenred.layers.mlp import Mlp
from tokenred.report import write_json
from tokenred.timing import benchmark_interleaved, paired_ratio

from _protocol import TimingDefaults

# batch 1 on CPU (latency); VMamba's batch 128 on CUDA
PROTOCOL = TimingDefaults(cpu_batch=1, cuda_batch=128, cpu_warmup=3, cpu_iters=20, rounds=10)


#: DeiT-S with tokenred's MLP (fc1 + GELU as one oneDNN call in CPU inference, as in VMamba):
#: the part of VMamba's CPU speed-up that the same fusion would give a ViT too
CONTROL = "deit_small (fused MLP, control)"


def with_fused_mlp(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every timm ``Mlp`` running as tokenred's (a subclass: same parameters and
    function, only its forward differs)."""
    for module in model.modules():
        if type(module) is TimmMlp:
            module.__class__ = Mlp
    return model


def main() -> int:
    parser = PROTOCOL.parser(__doc__.split("\n")[0])
    parser.add_argument("--ssm", "--vmamba", dest="vmamba", default="vmamba_tiny_s1l8",
                        help="the SSM backbone to time against DeiT-S (any with a scan_backend "
                             "argument: vmamba_*, medmamba_*, vim_*)")
    parser.add_argument("--reference", choices=["auto", "yes", "no"], default="auto",
                        help="also time the sequential-loop backend (auto: on CPU only)")
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="skip the control row: DeiT-S with the fused MLP VMamba uses on CPU")
    args = parser.parse_args()
    cuda, batch, warmup, iters = PROTOCOL.resolve(args)

    torch.manual_seed(0)
    deit_model = tokenred.create_backbone("deit_small_patch16_224")
    models = {"deit_small_patch16_224": deit_model,
              f"{args.vmamba} (torch scan)": tokenred.create_backbone(args.vmamba, scan_backend="torch")}
    if not cuda and scan_cpp.available():        # the compiled CPU scan
        models[f"{args.vmamba} (cpp scan)"] = tokenred.create_backbone(args.vmamba, scan_backend="cpp")
    if args.reference == "yes" or (args.reference == "auto" and not cuda):
        models[f"{args.vmamba} (reference loop)"] = tokenred.create_backbone(
            args.vmamba, scan_backend="reference")
    if not cuda and args.control:
        models[CONTROL] = with_fused_mlp(copy.deepcopy(deit_model))
    if cuda and scan_triton.works_on(torch.device(args.device)):   # the Triton kernel
        models[f"{args.vmamba} (triton scan)"] = tokenred.create_backbone(args.vmamba, scan_backend="triton")
    if cuda and mamba_ssm_available():
        models[f"{args.vmamba} (mamba_ssm)"] = tokenred.create_backbone(args.vmamba, scan_backend="mamba_ssm")
    res = benchmark_interleaved(models, 224, batch, args.device, args.dtype, args.amp, warmup,
                                iters, args.rounds, args.threads)
    env = res["deit_small_patch16_224"].env
    print(f"batch {batch}, {env['dtype']}{'+amp' if args.amp else ''}, {env['device_name']} "
          f"({env['device']}), {env['threads']} threads, torch {env['torch']}, {iters} timed "
          f"forwards in {args.rounds} interleaved rounds; the default scan backend here "
          f"(auto): {env['scan_backend']}")
    deit = res["deit_small_patch16_224"]
    print(f"{'model':<40} {'median ms':>10} {'IQR ms':>8} {'img/s':>9} {'x DeiT-S':>9} {'paired':>7}")
    ratios = {}
    for name, r in res.items():
        ratio, paired = r.median_ms / deit.median_ms, paired_ratio(r, deit)
        ratios[name] = {"latency_vs_deit": ratio, "latency_vs_deit_paired": paired}
        print(f"{name:<40} {r.median_ms:>10.2f} {r.iqr_ms:>8.2f} {r.images_per_s:>9.1f} "
              f"{ratio:>8.2f}x {paired:>6.2f}x")
    control = res.get(CONTROL)
    if control is not None:
        print(f"against the control ({CONTROL}, {control.median_ms:.2f} ms):")
        for name, r in res.items():
            if name.startswith("deit_small"):
                continue
            ratio, paired = r.median_ms / control.median_ms, paired_ratio(r, control)
            ratios[name].update(latency_vs_control=ratio, latency_vs_control_paired=paired)
            print(f"  {name:<38} {ratio:>8.2f}x {paired:>6.2f}x")
    if args.json:
        payload = {"args": vars(args), "batch_size": batch, "env": env, "ratios": ratios,
                   "results": {k: r.as_dict(env=False) for k, r in res.items()}}
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
