"""Tables from a ``compare`` DataFrame, written atomically (temp file + rename): a killed run never
leaves a half-written report behind."""
from __future__ import annotations

import html
import json
import math
import os
import tempfile
from typing import Any

import pandas as pd

from .rows import table_from_store  # noqa: F401  (a run directory's table: tokenred report)

TABLE_COLUMNS = [
    ("method", "method", "{}"),
    ("params", "params", "{}"),
    ("match", "matched to", "{}"),
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
    ("delta_top1", "Δtop-1 [95% CI]", "{:+.2f}"),
    ("mcnemar_p", "p (McNemar)", "{:.3g}"),
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
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp's 0600 is not a report's
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str, payload: dict) -> None:
    """``payload`` as indented JSON at ``path``, atomically (for benchmark scripts' --json)."""
    atomic_write_text(path, json.dumps(payload, indent=1, default=str))


def _present(value: Any) -> bool:
    return not (value is None or value == "" or (isinstance(value, float) and math.isnan(value)))


def _cell(value: Any, fmt: str) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


#: which way is better, for bold-facing the best value of a column
_BETTER = {"gflops": min, "flop_reduction_pct": max, "images_per_s": max, "speedup": max,
           "latency_median_ms": min, "top1": max, "delta_top1": max, "top5": max,
           "agreement": max, "kl": min}
FORMATS = ("md", "csv", "tex", "html")


def _columns(group: pd.DataFrame) -> list:
    shown = [c for c in TABLE_COLUMNS
             if c[0] != "match" or ("match" in group and group["match"].notna().any())]
    return shown + [c for c in EVAL_COLUMNS if c[0] in group and group[c[0]].notna().any()]


def _best(group: pd.DataFrame, key: str):
    """The best value of a column, or None where nothing stands out (all equal, or empty)."""
    if key not in _BETTER or key not in group:
        return None
    values = group[key].dropna()
    if values.nunique() < 2:
        return None
    return _BETTER[key](values)


def _cells(group: pd.DataFrame, row: pd.Series, columns: list) -> list[tuple[str, bool]]:
    """(text, is_best) for each column of ``row``."""
    out = []
    for key, _, fmt in columns:
        if key == "latency_median_ms":
            text = (_cell(row["latency_median_ms"], "{:.1f}") + " ("
                    + _cell(row["latency_iqr_ms"], "{:.1f}") + ")")
        elif key == "speedup" and _present(row.get("timing_flags")):
            text = _cell(row[key], fmt) + " †"   # see the note: this timing means little
        elif key == "delta_top1" and _present(row.get("delta_top1_ci_low")):
            # the paired-bootstrap interval: a small drop on few images is shown as what it is
            text = (_cell(row[key], fmt) + " [" + _cell(row["delta_top1_ci_low"], "{:+.2f}")
                    + ", " + _cell(row["delta_top1_ci_high"], "{:+.2f}") + "]")
        else:
            text = _cell(row[key], fmt)
        best = _best(group, key)
        out.append((text, best is not None and len(group) > 1 and row[key] == best))
    return out


def _header_line(first: pd.Series) -> str:
    n_params = "–" if pd.isna(first["n_params"]) else f"{first['n_params'] / 1e6:.2f} M params"
    built = (f"built with {first['backbone_args']} · "
             if _present(first.get("backbone_args")) else "")
    return (f"{built}{n_params} · batch {first['batch_size']} · {first['input_size']}² · "
            f"{first['dtype']} · {first['device']}")


def _notes(df: pd.DataFrame) -> list[str]:
    notes = []
    if "eval_images" in df and df["eval_images"].notna().any():
        first = df[df["eval_images"].notna()].iloc[0]
        subset = first.get("eval_subset")
        notes.append(f"Evaluated on {int(first['eval_images'])} images"
                     + (f" ({subset})" if _present(subset) and subset != "all images" else "")
                     + f"; {int(first['eval_failed'])} could not be read or decoded and were "
                       f"skipped.")
        if "delta_top1_ci_low" in df and df["delta_top1_ci_low"].notna().any():
            notes.append("Δtop-1 is in points against `none` on the same images, with its 95% "
                         "paired-bootstrap interval; p is McNemar's exact test on the images "
                         "only one of the two models gets right (p ≥ 0.05: no evidence of a "
                         "difference).")
    failed = df.attrs.get("failed_images", [])
    if failed:
        listed = "; ".join(f"{p} ({why})" for p, why in failed[:20])
        notes.append(f"Not readable or not decodable: {listed}"
                     + (" ..." if len(failed) > 20 else ""))
    if "timing_flags" in df and df["timing_flags"].notna().any():
        flagged = df[df["timing_flags"].notna()]
        reasons = sorted({r for text in flagged["timing_flags"] for r in text.split("; ")})
        notes.append("† Timing that cannot mean much (" + "; ".join(reasons) + "): its speedup "
                     "is not evidence of anything; time again with more --iters/--warmup.")
    notes.extend(df.attrs.get("notes", []))
    if "tokens_out" in df and df["tokens_out"].astype(str).str.contains("/").any():
        notes.append("Tokens out, on grid backbones (VMamba, MedMamba): the tokens the 2D scans "
                     "ran on, stage by stage (fewest in any block of the stage); the map itself "
                     "always leaves whole. On sequence backbones: tokens leaving the last "
                     "reducing block.")
    for gap in df.attrs.get("skipped", []):
        notes.append(f"Not run: `{gap['method']}` on {gap['backbone']} ({gap['reason']}).")
    timed = df[df["device_name"].notna()] if "device_name" in df else df.iloc[0:0]
    if len(timed):
        env = timed.iloc[0]
        allocator = env.get("allocator")     # (absent or NaN in rows timed before it was kept)
        math = env.get("scan_math")          # (likewise, before the scan's math was recorded)
        backend = env.get("scan_backend", "–")
        if isinstance(math, str):            # (it describes the torch scan's exponentials)
            math = f" ({math})" if backend == "torch" else f" (the torch scan here: {math})"
        notes.append(f"Environment: {env['device_name']} ({env['device']}), {env['threads']} "
                     f"threads, torch {env['torch']}, timm {env['timm']}, tokenred "
                     f"{env['tokenred']}, scan backend {backend}"
                     f"{math if isinstance(math, str) else ''}, "
                     f"allocator: {allocator if isinstance(allocator, str) else 'not recorded'}. "
                     "GFLOPs are multiply-adds per image (fvcore/paper convention); speedup is "
                     "images/s over `none` on the same backbone, timed interleaved in one run; "
                     "latency is the median per batch with its interquartile range; best value "
                     "per column in bold.")
    return notes


def markdown_table(df: pd.DataFrame) -> str:
    """One table per backbone, methods as rows (best value per column in bold), then notes and
    the environment it was measured in."""
    parts = []
    for backbone, group in df.groupby("backbone", sort=False):
        parts.append(f"### {backbone}\n\n{_header_line(group.iloc[0])}\n")
        columns = _columns(group)
        header = [title for _, title, _ in columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for _, row in group.iterrows():
            cells = [f"**{t}**" if best else t for t, best in _cells(group, row, columns)]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    parts.extend(n + "\n" for n in _notes(df))
    return "\n".join(parts)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}
_TEX_SYMBOLS = {"×": r"$\times$", "Δ": r"$\Delta$", "²": r"$^2$", "‖": r"$\Vert$", "–": "--",
                "·": r"$\cdot$"}


def latex_escape(text: str) -> str:
    out = "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))
    for symbol, tex in _TEX_SYMBOLS.items():
        out = out.replace(symbol, tex)
    return out


def latex_tables(df: pd.DataFrame) -> str:
    """booktabs tables (``\\usepackage{booktabs}``), one per backbone, best values in bold."""
    parts = []
    for backbone, group in df.groupby("backbone", sort=False):
        columns = _columns(group)
        spec = "l" * 2 + "r" * (len(columns) - 2)
        lines = [r"\begin{table}[t]", r"\centering",
                 rf"\caption{{{latex_escape(backbone)}: {latex_escape(_header_line(group.iloc[0]))}}}",
                 rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                 " & ".join(latex_escape(t) for _, t, _ in columns) + r" \\", r"\midrule"]
        for _, row in group.iterrows():
            cells = [rf"\textbf{{{latex_escape(t)}}}" if best else latex_escape(t)
                     for t, best in _cells(group, row, columns)]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        parts.append("\n".join(lines))
    parts.extend("% " + latex_escape(n) + "\n" for n in _notes(df))
    return "\n".join(parts)


def html_tables(df: pd.DataFrame) -> str:
    parts = ["<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tokenred report</title>"
             "<style>table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ccc}"
             "td{text-align:right}</style></head><body>"]
    for backbone, group in df.groupby("backbone", sort=False):
        columns = _columns(group)
        parts.append(f"<h3>{html.escape(backbone)}</h3><p>{html.escape(_header_line(group.iloc[0]))}</p>")
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in columns)
                     + "</tr>")
        for _, row in group.iterrows():
            cells = [f"<td><b>{html.escape(t)}</b></td>" if best else f"<td>{html.escape(t)}</td>"
                     for t, best in _cells(group, row, columns)]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.extend(f"<p>{html.escape(n)}</p>" for n in _notes(df))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def pareto_front(xs: list[float], ys: list[float], x_larger_better: bool,
                 tolerance: float = 0.0) -> list[int]:
    """Indices of the points no other point beats in both x and y (y: larger is better), sorted
    by x. ``tolerance`` > 0 widens the front: a point is dropped only when one no worse in x is
    at least ``tolerance`` better in y."""
    front = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        dominated = any(
            (xj >= x if x_larger_better else xj <= x)
            and (yj >= y + tolerance if tolerance > 0 else yj >= y and (xj != x or yj != y))
            for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: xs[i])


def write_plots(df: pd.DataFrame, out_dir: str) -> list[str]:
    """Accuracy (top-1, or agreement on unlabeled data) vs throughput and vs GFLOPs, one figure
    per backbone, PNG and SVG, Pareto front drawn. Nothing without evaluation results."""
    if "agreement" not in df or not df["agreement"].notna().any():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for backbone, group in df.groupby("backbone", sort=False):
        group = group[group["agreement"].notna()]
        metric = "top1" if group["top1"].notna().all() else "agreement"
        label = "top-1 %" if metric == "top1" else "agreement with none %"
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (xkey, xlabel, larger) in zip(axes, (("images_per_s", "images/s", True),
                                                     ("gflops", "GFLOPs", False)), strict=True):
            xs, ys = group[xkey].tolist(), group[metric].tolist()
            names = [m + (f":{p}" if p else "") for m, p in zip(group["method"], group["params"],
                                                                 strict=True)]
            ax.scatter(xs, ys)
            if metric == "top1" and "delta_top1_ci_low" in group:
                # Δtop-1's paired interval, placed around each method's top-1
                base = [y - d for y, d in zip(ys, group["delta_top1"].fillna(0.0), strict=True)]
                low = [max(0.0, y - (b + lo)) for y, b, lo in
                       zip(ys, base, group["delta_top1_ci_low"].fillna(0.0), strict=True)]
                high = [max(0.0, (b + hi) - y) for y, b, hi in
                        zip(ys, base, group["delta_top1_ci_high"].fillna(0.0), strict=True)]
                ax.errorbar(xs, ys, yerr=[low, high], fmt="none", ecolor="gray", capsize=3,
                            label="95% CI of Δtop-1")
            for x, y, name in zip(xs, ys, names, strict=True):
                ax.annotate(name, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
            # a sweep: the points of one method joined into its curve, as papers draw them
            for method in dict.fromkeys(group["method"]):
                pts = sorted((x, y) for x, y, m in zip(xs, ys, group["method"], strict=True)
                             if m == method and x == x and y == y)
                if len(pts) > 1:
                    ax.plot(*zip(*pts), "-", alpha=0.5, linewidth=1)
            front = pareto_front(xs, ys, larger)
            ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", label="Pareto front")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        fig.suptitle(backbone)
        fig.tight_layout()
        for ext in ("png", "svg"):
            path = os.path.join(out_dir, f"{backbone}.{ext}")
            tmp = os.path.join(out_dir, f".tmp-{backbone}.{ext}")
            try:
                fig.savefig(tmp, format=ext, dpi=120)
                os.replace(tmp, path)
            except BaseException:   # a full disk leaves no half-written plot
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            written.append(path)
        plt.close(fig)
    return written


def write_report(df: pd.DataFrame, out_dir: str, formats=FORMATS, plots: bool = True) -> dict:
    """Write the chosen formats (``results.md``/``.csv``/``.tex``/``.html``) and the plots into
    ``out_dir``, each file atomically."""
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise ValueError(f"unknown report format(s) {bad}; choose from {list(FORMATS)}")
    os.makedirs(out_dir, exist_ok=True)
    render = {"md": markdown_table, "csv": lambda d: d.to_csv(index=False),
              "tex": latex_tables, "html": html_tables}
    paths = {}
    for fmt in formats:
        paths[fmt] = os.path.join(out_dir, f"results.{fmt}")
        atomic_write_text(paths[fmt], render[fmt](df))
    if plots:
        paths["plots"] = write_plots(df, out_dir)
    return paths


def write_run(df: pd.DataFrame, out_dir: str) -> dict[str, str]:
    return write_report(df, out_dir, formats=("csv", "md"), plots=False)
