"""The comparison table's row schema, owned once: its columns, a row from stored measurements,
and the table assembled from a results store, used by ``compare``, ``report`` (a run directory
alone), ``search`` (its own measurements stay out of comparison tables) and the CLI."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import pandas as pd

from .store import Key

COLUMNS = ["backbone", "method", "params", "match", "n_params", "gflops", "flop_reduction_pct",
           "images_per_s", "speedup", "latency_median_ms", "latency_iqr_ms", "tokens_out",
           "top1", "top5", "delta_top1", "delta_top1_ci_low", "delta_top1_ci_high", "mcnemar_p",
           "agreement", "kl", "eval_images", "eval_failed", "eval_subset", "timing_flags",
           "backbone_args", "batch_size", "input_size", "dtype", "device", "device_name",
           "threads", "torch", "timm", "tokenred", "scan_backend", "scan_math", "allocator"]


def make_row(backbone: str, method_text: str, batch_size: int, input_size: int,
             payloads: dict, base_flops: Optional[dict]) -> dict:
    """One table row from stored measurements (missing kinds give empty cells)."""
    flops, timing, ev = (payloads.get(k) or {} for k in ("flops", "timing", "eval"))
    env = timing.get("env", {})
    name, _, params = method_text.partition(":")
    g = flops.get("gflops")
    g0 = (base_flops or {}).get("gflops")
    flags = timing.get("flags") or []
    args = flops.get("backbone_args") or {}
    row = {"backbone": backbone, "method": name.strip(), "params": params.strip(),
           "timing_flags": "; ".join(flags) if flags else None,
           "backbone_args": ", ".join(f"{k}={v}" for k, v in args.items()) or None,
           "eval_subset": ev.get("eval_subset"),
           "n_params": flops.get("n_params"), "gflops": g,
           "flop_reduction_pct": 100.0 * (1 - g / g0) if g is not None and g0 else None,
           "match": flops.get("match"), "batch_size": batch_size, "input_size": input_size,
           "dtype": env.get("dtype", "") + ("+amp" if env.get("amp") else ""),
           "tokens_out": flops.get("tokens_out")}
    for k in ("images_per_s", "speedup", "latency_median_ms", "latency_iqr_ms"):
        row[k] = timing.get(k)
    for k in ("device", "device_name", "threads", "torch", "timm", "tokenred", "scan_backend",
              "allocator"):
        row[k] = env.get(k)
    math = env.get("scan_math")          # (absent in rows timed before it was recorded)
    row["scan_math"] = ", ".join(f"{k} {v}" for k, v in math.items()) if math else None
    for k in ("top1", "top5", "delta_top1", "delta_top1_ci_low", "delta_top1_ci_high",
              "mcnemar_p", "agreement", "kl", "eval_images", "eval_failed"):
        row[k] = ev.get(k)
    return row


def add_notes(notes: list[str], backbone: str, payloads: Mapping[str, Optional[dict]]) -> None:
    """What a report must say about a backbone beyond its numbers (resampled weights, class
    counts), once each."""
    for kind in ("flops", "eval"):
        for text in (payloads.get(kind) or {}).get("notes") or ():
            line = f"{backbone}: {text}"
            if line not in notes:
                notes.append(line)


@dataclass(frozen=True)
class RowSource:
    """Where one row's measurements are stored: a key per kind (``unsupported`` among them when
    the method may have been refused), the baseline's FLOPs key, and the match target(s) the
    row's parameters were solved for (``None``: the label stored with the FLOPs, if any)."""
    backbone: str
    method: str
    batch_size: int
    input_size: int
    keys: Mapping[str, Key]
    base_key: Optional[Key]
    match: Optional[str] = None


def assemble(store, sources: Sequence[RowSource], skipped: Optional[list] = None) -> pd.DataFrame:
    """The table of ``sources``, one row each in order; a source stored as unsupported is listed
    in ``df.attrs["skipped"]`` instead. ``attrs`` also carry the failed images and the notes the
    report must print."""
    rows, skipped, failed, notes = [], list(skipped or []), [], []
    for src in sources:
        gap = store.get(src.keys["unsupported"]) if "unsupported" in src.keys else None
        if gap is not None:
            skipped.append({"backbone": src.backbone, "method": src.method,
                            "reason": gap["reason"]})
            continue
        payloads = {k: store.get(key) for k, key in src.keys.items() if k != "unsupported"}
        row = make_row(src.backbone, src.method, src.batch_size, src.input_size, payloads,
                       store.get(src.base_key) if src.base_key is not None else None)
        if src.match is not None:
            row["match"] = src.match
        rows.append(row)
        if payloads.get("eval") and not failed:
            failed = [tuple(f) for f in payloads["eval"].get("failed_images", [])]
        add_notes(notes, src.backbone, payloads)
    return _frame(rows, skipped, failed, notes)


def _frame(rows: list, skipped: list, failed: list, notes: list) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["skipped"] = skipped
    df.attrs["failed_images"] = failed
    df.attrs["notes"] = notes
    return df


def table_from_store(store) -> pd.DataFrame:
    """The comparison table from a run's results store alone: the latest measurement of each kind
    per backbone, method, input size, batch size, dtype and device (``tokenred search``'s own
    measurements, which may share a store, are not comparison rows)."""
    from .measure import is_search_key

    latest: dict[tuple, dict] = {}
    order: list[tuple] = []
    skipped, failed = [], []
    for key, payload in store.items():
        if key.kind == "match" or is_search_key(key):
            continue
        group = (key.backbone, key.method, key.input_size, key.batch_size, key.dtype, key.device)
        if group not in latest:
            latest[group] = {}
            order.append(group)
        latest[group][key.kind] = payload
    rows, notes = [], []
    for group in order:
        payloads = latest[group]
        if "unsupported" in payloads:
            skipped.append({"backbone": group[0], "method": group[1],
                            "reason": payloads["unsupported"]["reason"]})
            continue
        base = latest.get((group[0], "none") + group[2:], {}).get("flops")
        rows.append(make_row(group[0], group[1], group[3], group[2], payloads, base))
        add_notes(notes, group[0], payloads)
        if "eval" in payloads and not failed:
            failed = [tuple(f) for f in payloads["eval"].get("failed_images", [])]
    return _frame(rows, skipped, failed, notes)
