"""The README's site-search section from the searches in this folder (``run.sh``): per search the
shortlist (or front) near the unreduced model with its validation Δtop-1, the recommended point
and its held-out result, and the documented default's own point where the search measured it.

    python reports/search/summary.py > /tmp/fronts.md
"""
from __future__ import annotations

import os
import re
import sys

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
#: the documented default sites of each method (README, Methods), as blocks of these models
DEFAULTS = {"quartermap": ("stage 0", {"vmamba": (0, 1), "medmamba": (0,)})}


def section(name: str) -> str:
    folder = os.path.join(HERE, name)
    text = open(os.path.join(folder, "search.md")).read()
    shortlist = os.path.join(folder, "shortlist.csv")   # (with validation columns)
    front = pd.read_csv(shortlist if os.path.isfile(shortlist)
                        else os.path.join(folder, "front.csv"))
    points = pd.read_csv(os.path.join(folder, "points.csv"))
    title = text.splitlines()[0].removeprefix("# Site search: ")
    validated = "val_delta_top1" in front
    # the cheapest points that stay close to the unreduced model (on validation where measured)
    near = (front[front["val_delta_top1"] >= -1.0].head(8) if validated
            else front[front["delta_top1"] >= -3.0])
    lines = [f"**{title}**", "",
             ("| shortlisted point |" if validated else "| front point |")
             + " GFLOPs | Δtop-1 calibration | KL calibration |"
             + (" Δtop-1 validation |" if validated else ""),
             "|---|---|---|---|" + ("---|" if validated else "")]
    for _, r in near.iterrows():
        lines.append(f"| `{r['spec']}` | {r['gflops']:.4f} | {r['delta_top1']:+.2f} | "
                     f"{r['kl']:.4f} |" + (f" {r['val_delta_top1']:+.2f} |" if validated else ""))
    method = title.split(" on ")[0]
    if method in DEFAULTS:
        label, by_family = DEFAULTS[method]
        family = next((f for f in by_family if f in title), None)
        if family:
            spec = f"{method}:where=blocks:" + "/".join(str(b) for b in by_family[family])
            row = points[points["spec"] == spec]
            if not row.empty:
                r = row.iloc[0]
                lines.append(f"| default ({label}) `{spec}` | {r['gflops']:.4f} | "
                             f"{r['delta_top1']:+.2f} | {r['kl']:.4f} |"
                             + (_validation_cell(front, spec) if validated else ""))
    lines.append("")
    rec = re.search(r"^Recommended: .*$", text, re.M)
    held = re.search(r"^On the .*$", text, re.M)
    lines.append((rec.group(0) if rec else "No measured point meets the budget.")
                 + (" " + held.group(0) if held else ""))
    return "\n".join(lines) + "\n"


def _validation_cell(front: pd.DataFrame, spec: str) -> str:
    on_front = front[front["spec"] == spec]
    if on_front.empty:
        return " – (not shortlisted) |"
    return f" {on_front.iloc[0]['val_delta_top1']:+.2f} |"


def main() -> int:
    names = sorted(d for d in os.listdir(HERE) if os.path.isfile(os.path.join(HERE, d, "search.md")))
    print("\n".join(section(n) for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
