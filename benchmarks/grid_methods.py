"""Grid methods on VMamba-T: QuarterMap, ToMe (merge -> scan -> unmerge) and random drop vs none.

Part 1 (always): copies of one random-init VMamba-T[s1l8] with ``none`` and each grid method at
the same sites and the same token budget (the defaults: stage 0, a quarter of each map
scanned) are timed round-robin in one process; GFLOPs are counted with ``tokenred.count_flops``.
Ratios are of medians and, paired, the median of per-round ratios.

Part 2 (always): the reduction's own cost — each method's reduce + restore alone on a map of every
stage's size (the scan between them left out), so the merge/unmerge overhead ToMe carries and
QuarterMap avoids is measured directly rather than inferred.

Part 0 (always): where an unreduced forward's time goes — the time inside SS2D's cross-scan
(the four directions' layout, x_proj, dt_proj, the selective scan and the cross-merge, or the
fused kernel doing all of it) per stage, against the scan step's share of the MACs: it shows
why the grid methods' speedups are not proportional to their FLOP cuts.

Part 3 (``--where``): QuarterMap on each stage alone and on stage sets, for choosing where to
reduce (speed and FLOPs here; pass ``--data DIR --checkpoint FILE`` to tokenred compare with the
same specs for accuracy, which needs pretrained weights).

    python benchmarks/grid_methods.py --where                     # CPU, batch 8
    python benchmarks/grid_methods.py --device cuda --batch-size 128 --where
"""
from __future__ import annotations

import copy
import statistics
import sys
import time

import torch

import tokenred
from tokenred.report import write_json
from tokenred.sites import GridContext, ReducedGrid, Site
from tokenred.timing import benchmark_interleaved, paired_ratio

from _protocol import TimingDefaults, gflops_or_nan

PROTOCOL = TimingDefaults(cpu_batch=8, cuda_batch=128, cpu_warmup=2, cpu_iters=10, rounds=5)
METHODS = ["none", "quartermap", "quartermap:mode=avg", "tome", "random_drop"]
WHERE = ["stage:0", "stage:1", "stage:2", "stage:3", "stages:0-1", "stages:0-2", "stages:0-3"]


def build(backbone: str, specs: list[str], device: str) -> tuple[dict, dict, dict]:
    torch.manual_seed(0)
    base = tokenred.create_backbone(backbone).eval()
    models, gflops, tokens = {}, {}, {}
    for spec in specs:
        name, params = tokenred.params.parse_method_spec(spec)
        where = params.pop("where", None)
        model = copy.deepcopy(base)
        handle = tokenred.apply(model, name, where=where, **params)
        gflops[spec] = gflops_or_nan(model)
        with torch.no_grad():
            model(torch.randn(1, 3, 224, 224))
        tokens[spec] = handle.state.tokens_out
        models[spec] = model.to(device)
    return models, gflops, tokens


def time_models(models: dict, gflops: dict, tokens: dict, args, batch: int, warmup: int,
                iters: int) -> dict:
    res = benchmark_interleaved(models, 224, batch, args.device, args.dtype, args.amp, warmup,
                                iters, args.rounds, args.threads)
    base = res["none"]
    print(f"{'method':<34} {'GFLOPs':>7} {'dFLOPs%':>8} {'median ms':>10} {'IQR':>7} "
          f"{'img/s':>8} {'speedup':>8} {'paired':>7}  tokens scanned per stage")
    out = {}
    for spec, r in res.items():
        speed, paired = base.median_ms / r.median_ms, 1.0 / paired_ratio(r, base)
        cut = 100 * (1 - gflops[spec] / gflops["none"])
        out[spec] = {"gflops": gflops[spec], "flop_reduction_pct": cut, "speedup": speed,
                     "speedup_paired": paired, "tokens": tokens[spec], **r.as_dict(env=False)}
        print(f"{spec:<34} {gflops[spec]:>7.3f} {cut:>8.1f} {r.median_ms:>10.2f} {r.iqr_ms:>7.2f} "
              f"{r.images_per_s:>8.1f} {speed:>7.2f}x {paired:>6.2f}x  {tokens[spec]}")
    return {"env": base.env, "rows": out}


def scan_time_share(args, batch: int, reps: int) -> dict:
    """Milliseconds per forward spent in SS2D.scan_2d — the cross-scan: the four directions'
    layout, x_proj, dt_proj, the selective scan and the cross-merge, or the fused kernel that
    does all of it (``cpp`` inference) — by map size (stage). (Until the twelfth session this
    timed ``scan_directions``, which the fused kernel never calls: it printed 0% with ``cpp``.)"""
    from tokenred.backbones.vmamba import SS2D

    torch.manual_seed(0)
    model = tokenred.create_backbone(args.backbone).eval().to(args.device)
    try:
        macs = tokenred.count_flops(model, 224).by_operator
    except ImportError:
        macs = {"none": float("nan")}
    spent: dict = {}
    original = SS2D.scan_2d
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(self, x_map):
        sync()
        t0 = time.perf_counter()
        y = original(self, x_map)
        sync()
        length = x_map.shape[1] * x_map.shape[2]
        spent[length] = spent.get(length, 0.0) + time.perf_counter() - t0
        return y

    x = torch.randn(batch, 3, 224, 224, device=args.device)
    SS2D.scan_2d = timed
    try:
        with torch.inference_mode():
            model(x)
            spent.clear()
            total = 0.0
            for _ in range(reps):
                sync()
                t0 = time.perf_counter()
                model(x)
                sync()
                total += time.perf_counter() - t0
    finally:
        SS2D.scan_2d = original
    forward_ms = 1e3 * total / reps
    scan_macs = macs.get("bmm", 0) + macs.get("selective_scan", 0)
    rows = {f"L={length}": 1e3 * t / reps for length, t in sorted(spent.items(), reverse=True)}
    share = sum(rows.values()) / forward_ms
    print(f"\nunreduced forward {forward_ms:.1f} ms (batch {batch}); in the cross-scan "
          f"(direction layout, x_proj, dt_proj, selective scan, cross-merge): "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in rows.items())
          + f" = {100 * share:.0f}% of the time for {100 * scan_macs / sum(macs.values()):.1f}% "
            f"of the MACs")
    return {"forward_ms": forward_ms, "scan_step_ms": rows, "time_share": share,
            "mac_share": scan_macs / sum(macs.values())}


def reduction_cost(args, batch: int, reps: int) -> dict:
    """Milliseconds per call of reduce + restore on a [batch, S, S, C] map, per method and stage
    size (VMamba-T[s1l8]: S = 56, 28, 14, 7 and C = d_inner = 96, 192, 384, 768)."""
    dev = torch.device(args.device)
    methods = {spec: tokenred.get_method(spec.split(":")[0])(
        **tokenred.params.parse_method_spec(spec)[1]) for spec in METHODS if spec != "none"}
    sizes = [(56, 96), (28, 192), (14, 384), (7, 768)]
    print(f"\nreduction's own cost, ms per call (reduce + restore, batch {batch}; the scan in "
          f"between is not included)")
    print(f"{'method':<22}" + "".join(f"{f'{s}x{s}x{c}':>14}" for s, c in sizes))
    out: dict = {}
    for spec, reducer in methods.items():
        cells = []
        for stage, (size, dim) in enumerate(sizes):
            x = torch.randn(batch, size, size, dim, device=dev)
            ctx = GridContext(Site(f"layers.{stage}.blocks.0", "grid", stage, 0, 0), 0, 1)

            def call(reducer=reducer, x=x, ctx=ctx) -> torch.Tensor:
                reducer.begin_forward()
                red = reducer.reduce_grid(x, ctx)
                assert isinstance(red, ReducedGrid)
                return red.restore(red.x)

            times = []
            with torch.no_grad():
                for i in range(reps + 3):
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    call()
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    if i >= 3:
                        times.append(1e3 * (time.perf_counter() - t0))
            cells.append(statistics.median(times))
        out[spec] = dict(zip([f"{s}x{s}" for s, _ in sizes], cells, strict=True))
        print(f"{spec:<22}" + "".join(f"{c:>14.3f}" for c in cells))
    return out


def main() -> int:
    parser = PROTOCOL.parser(__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="vmamba_tiny_s1l8")
    parser.add_argument("--where", action="store_true", help="also sweep QuarterMap's sites")
    args = parser.parse_args()
    cuda, batch, warmup, iters = PROTOCOL.resolve(args)
    payload: dict = {"args": vars(args), "batch_size": batch}

    models, gflops, tokens = build(args.backbone, METHODS, args.device)
    head = time_models(models, gflops, tokens, args, batch, warmup, iters)
    env = head["env"]
    print(f"({args.backbone}, batch {batch}, {env['dtype']}{'+amp' if args.amp else ''}, "
          f"{env['device_name']} ({env['device']}), {env['threads']} threads, torch "
          f"{env['torch']}, scan backend {env.get('scan_backend')}, {iters} timed forwards x "
          f"{args.rounds} interleaved rounds)")
    payload["methods"] = head
    del models
    payload["scan_time_share"] = scan_time_share(args, batch, 10 if cuda else 3)
    payload["reduction_cost_ms"] = reduction_cost(args, batch, 20 if cuda else 5)
    if args.where:
        print("\nquartermap by site choice")
        specs = ["none"] + [f"quartermap:where={w}" for w in WHERE]
        models, gflops, tokens = build(args.backbone, specs, args.device)
        payload["where"] = time_models(models, gflops, tokens, args, batch, warmup, iters)
    if args.json:
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
