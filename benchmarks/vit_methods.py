"""The training-free catalogue on DeiT-S at matched GFLOPs, and what the class-attention row costs.

Part 1: every method with a rate parameter (EViT, Top-K, ATS, PiToMe, K-Medoids, DPC-KNN, ToMe,
random drop) solved for each GFLOP target (``tokenred.compare(match=...)``: exact search on the
FLOP count), then all of them timed interleaved with ``none`` in one run: GFLOPs reached, the
solved value, images/s and speedup.

Part 2: the class-token attention row (``ctx.cls_attention``) that EViT/Top-K/ATS read. A probe
method reads it at EViT's sites (3, 6, 9) and keeps every token, so the only extra work is the
row itself; it is timed against ``none`` and against a probe that forms the full [N, N]
attention matrix instead (what unfused explicit-softmax code pays). The row is O(N·d) per head,
so its overhead should be within noise of zero.

    python benchmarks/vit_methods.py                        # CPU, batch 8, targets 3.0 and 2.3
    python benchmarks/vit_methods.py --device cuda --batch-size 256
"""
from __future__ import annotations

import copy

import torch

import tokenred
from tokenred import Reducer, register_method
from tokenred.report import write_json
from tokenred.timing import benchmark_interleaved

from _protocol import TimingDefaults

PROTOCOL = TimingDefaults(cpu_batch=8, cuda_batch=256, cpu_warmup=2, cpu_iters=12, rounds=4,
                          cuda_iters=50)
METHODS = ["none", "evit", "topk", "ats", "pitome", "kmedoids", "dpc_knn", "tome", "random_drop"]


@register_method("bench_cls_row")
class ClassRowProbe(Reducer):
    """Reads the class-attention row and keeps every token (benchmark probe)."""

    kinds = frozenset({"sequence"})
    requires = frozenset({"cls_attention"})

    def default_sites(self, sites):
        return [s for s in sites if s.block in (3, 6, 9)]

    def reduce_sequence(self, tokens, ctx):
        ctx.cls_attention.sum()
        return tokens


@register_method("bench_full_attention")
class FullAttentionProbe(ClassRowProbe):
    """Forms the full [N, N] attention from the keys (the unfused alternative) and keeps all."""

    requires = frozenset({"metric"})

    def reduce_sequence(self, tokens, ctx):
        k = ctx.metric                                   # [B, N, d] stand-in for q and k
        (k @ k.transpose(-1, -2)).softmax(-1).sum()
        return tokens


def main() -> int:
    parser = PROTOCOL.parser(__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="deit_small_patch16_224")
    parser.add_argument("--targets", default="3.0,2.3", help="GFLOP targets")
    args = parser.parse_args()
    _, batch, warmup, iters = PROTOCOL.resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    targets = [f"gflops={t.strip()}" for t in args.targets.split(",") if t.strip()]
    df = tokenred.compare([args.backbone], METHODS, match=targets, device=args.device,
                          batch_size=batch, warmup=warmup, iters=iters, rounds=args.rounds,
                          dtype=args.dtype, amp=args.amp)
    cols = ["method", "params", "match", "gflops", "images_per_s", "speedup", "tokens_out"]
    print(df[cols].to_string(index=False))
    for gap in df.attrs["skipped"]:
        print(f"not matched: {gap['method']}: {gap['reason']}")

    model = tokenred.create_backbone(args.backbone)
    group = {"none": model}
    for name in ("bench_cls_row", "bench_full_attention"):
        m = copy.deepcopy(model)
        tokenred.apply(m, name)
        group[name] = m
    res = benchmark_interleaved(group, 224, batch, args.device, args.dtype, args.amp, warmup,
                                iters * 2, args.rounds * 2, args.threads)
    base = res["none"].median_ms
    print(f"\nclass-attention row at blocks 3/6/9, batch {batch}: none {base:.1f} ms, row "
          f"{res['bench_cls_row'].median_ms:.1f} ms ({res['bench_cls_row'].median_ms / base:.3f}x), "
          f"full NxN attention {res['bench_full_attention'].median_ms:.1f} ms "
          f"({res['bench_full_attention'].median_ms / base:.3f}x)")
    if args.json:
        write_json(args.json, {"matched": df.to_dict(orient="records"),
                               "skipped": df.attrs["skipped"],
                               "cls_row_ms": {k: v.median_ms for k, v in res.items()},
                               "env": res["none"].env})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
