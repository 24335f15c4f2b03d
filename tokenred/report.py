"""Tables from a ``compare`` DataFrame, written atomically (temp file + rename): a killed run never
leaves a half-written report behind."""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any

import pandas as pd

TABLE_COLUMNS = [
    ("method", "method", "{}"),
    ("params", "params", "{}"),
    ("gflops", "GFLOPs", "{:.3f}"),
    ("flop_reduction_pct", "ΔFLOPs %", "{:.1f}"),
    ("images_per_s", "img/s", "{:.1f}"),
    ("speedup", "speedup", "{:.2f}×"),
    ("latency_median_ms", "latency ms (IQR)", None),
    ("tokens_out", "tokens out", "{}"),
]
#: shown when the run evaluated on data (top-1 columns only for labeled data)
EVAL_COLUMNS = [
    ("top1", "top-1 %", "{:.2f}"),
    ("delta_top1", "Δtop-1", "{:+.2f}"),
    ("top5", "top-5 %", "{:.2f}"),
    ("agreement", "agreement %", "{:.2f}"),
    ("kl", "KL(none‖m)", "{:.4f}"),
]


def atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cell(value: Any, fmt: str) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def markdown_table(df: pd.DataFrame) -> str:
    """One table per backbone, methods as rows, then the environment it was measured in."""
    parts = []
    for backbone, group in df.groupby("backbone", sort=False):
        first = group.iloc[0]
        parts.append(f"### {backbone}\n\n{first['n_params'] / 1e6:.2f} M params · batch "
                     f"{first['batch_size']} · {first['input_size']}² · {first['dtype']} · "
                     f"{first['device']}\n")
        columns = TABLE_COLUMNS + [c for c in EVAL_COLUMNS
                                   if c[0] in group and group[c[0]].notna().any()]
        header = [title for _, title, _ in columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for _, row in group.iterrows():
            cells = []
            for key, _, fmt in columns:
                if key == "latency_median_ms":
                    cells.append(f"{row['latency_median_ms']:.1f} ({row['latency_iqr_ms']:.1f})")
                else:
                    cells.append(_cell(row[key], fmt))
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    if "eval_images" in df and df["eval_images"].notna().any():
        first = df[df["eval_images"].notna()].iloc[0]
        parts.append(f"Evaluated on {int(first['eval_images'])} images "
                     f"({int(first['eval_failed'])} could not be decoded and were skipped).\n")
    failed = df.attrs.get("failed_images", [])
    if failed:
        listed = "; ".join(f"{p} ({why})" for p, why in failed[:20])
        parts.append(f"Not decodable: {listed}" + (" ..." if len(failed) > 20 else "") + "\n")
    for gap in df.attrs.get("skipped", []):
        parts.append(f"Not run: `{gap['method']}` on {gap['backbone']} ({gap['reason']}).\n")
    env = df.iloc[0]
    parts.append(f"Environment: {env['device_name']} ({env['device']}), {env['threads']} threads, "
                 f"torch {env['torch']}, timm {env['timm']}, tokenred {env['tokenred']}. "
                 "GFLOPs are multiply-adds per image (fvcore/paper convention); speedup is "
                 "images/s over `none` on the same backbone, timed interleaved in one run; latency "
                 "is the median per batch with its interquartile range.\n")
    return "\n".join(parts)


def write_run(df: pd.DataFrame, out_dir: str) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"csv": os.path.join(out_dir, "results.csv"),
             "md": os.path.join(out_dir, "results.md")}
    atomic_write_text(paths["csv"], df.to_csv(index=False))
    atomic_write_text(paths["md"], markdown_table(df))
    return paths
