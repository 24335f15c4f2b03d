"""``tokenred.search``: where to reduce, measured. For one method on one backbone it measures
every site's sensitivity, searches site sets (and the method's rate) and returns the Pareto front
of accuracy against GFLOPs, with the point it recommends for a budget.

What it does, in order:

1. **Split the data.** The folder's images in a fixed class-balanced order (``ImageList.head``):
   the first ``calibration`` are the calibration split, the next ``validation`` the validation
   split, every other image the held-out split. The search runs on the calibration split; the
   recommendation is chosen among the front's points on the validation split; only the
   recommended point (and ``none``) is evaluated on the held-out one, so its accuracy is not the
   one that chose it.
2. **Sensitivity.** The method on each candidate site alone (at each rate): Δtop-1, KL(none ‖
   method) and agreement on the calibration split, GFLOPs (fvcore) of one forward.
3. **Greedy.** Per rate: start from no site; at each step try every remaining site added to the
   current set and keep the one with the largest GFLOP saving per unit of KL added (KL, not
   Δtop-1: on a few hundred images it moves smoothly where accuracy moves in steps); every set
   on the way is a point.
4. **Local search.** Around each point of the front: one site added, one removed, the next rate
   up and down; new points are measured and the front recomputed (``rounds`` times).
5. **Front, shortlist and recommendation.** The front: points no other point beats on both
   GFLOPs and calibration accuracy (Δtop-1 on labeled data, −KL otherwise). The shortlist: the
   front widened to points at most ``SHORTLIST_TOLERANCE`` (1) top-1 point below it, each
   evaluated on the validation split. Choosing the best of hundreds of configurations by a few
   hundred images picks noise (the searches in ``reports/search`` missed their floor on held-out
   images by up to 2.7 points when they chose on calibration accuracy); choosing among a
   shortlist on a second, larger split much less. Budget ``gflops=X``: the most accurate
   shortlisted point (validation) with at most X GFLOPs; ``speedup=Y`` / ``latency_ms=Z``: the
   shortlist is timed next to ``none`` (interleaved, as ``compare`` times) and the most accurate
   point meeting it wins; ``max_drop=D``: the cheapest shortlisted point whose validation Δtop-1
   is at least −D. With ``validation=0`` the shortlist is the front and all of this uses the
   calibration numbers.

Every measurement goes to the results store (a run directory) through ``compare``'s measurement
kinds and keys (``tokenred.measure``), keyed by the backbone's weights, the split's images (by
content) and the protocol and marked as the search's own, so an interrupted search resumes and a
repeated one measures nothing twice.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import pandas as pd
import torch

from .backbone import runs_selective_scan
from .evaluate import DataError, ImageList, scan_folder
from .kernels import resolve_backend
from .match import parse_target
from .measure import Keys, Prepared, Protocol, build_backbone, measure, weights_identity
from .params import ParameterError, _literal, format_method_spec, parse_method_spec
from .registry import get_method
from .sites import adapter_for, select_sites
from .store import ResultsStore
from .timing import resolve_device

BUDGET_KINDS = ("gflops", "speedup", "latency_ms")
DEFAULT_SHARE_GRID = (0.5, 0.7, 0.9)


@dataclass
class SearchResult:
    """``points``: every measured configuration; ``front``: its Pareto front on the calibration
    split (ascending GFLOPs); ``shortlist``: the candidates the budget chose from (the front
    widened by ``SHORTLIST_TOLERANCE``, with their validation ``val_*`` columns; the front itself
    without a validation split); ``sensitivity``: each site alone; ``recommended``: the method
    spec of the chosen point (None when no point meets the budget), accepted as is by ``apply``
    and ``compare --methods``; ``held_out``: ``none`` and the recommended point on the held-out
    split; ``splits``: which images were used for what."""

    points: pd.DataFrame
    front: pd.DataFrame
    sensitivity: pd.DataFrame
    recommended: Optional[str]
    held_out: dict = field(default_factory=dict)
    splits: dict = field(default_factory=dict)
    budget: Optional[str] = None
    shortlist: Optional[pd.DataFrame] = None


#: the validation split's size when not given: this many, or half of what calibration leaves
DEFAULT_VALIDATION = 1024


def split_images(images: ImageList, calibration: int, validation: Optional[int] = 0
                 ) -> tuple[ImageList, Optional[ImageList], ImageList]:
    """Three disjoint splits of the fixed class-balanced order: the first ``calibration`` images,
    the next ``validation`` (``None``: ``DEFAULT_VALIDATION`` or half of what is left, whichever
    is smaller; 0: no validation split), and every other image (held out)."""
    n = len(images.paths)
    if calibration < 1 or calibration >= n:
        raise DataError(f"calibration={calibration}: give 1 .. {n - 1} images "
                        f"(the folder has {n}; the rest are validation and held out)")
    if validation is None:
        validation = min(DEFAULT_VALIDATION, (n - calibration) // 2)
    if validation < 0 or calibration + validation >= n:
        raise DataError(f"validation={validation}: give 0 .. {n - calibration - 1} images (the "
                        f"folder has {n}, calibration takes {calibration} and at least one image "
                        f"must be held out)")
    chosen = images.head(calibration)
    chosen.subset = f"calibration: {chosen.subset}"
    first = images.head(calibration + validation) if validation else chosen
    valid = _without(first, set(chosen.paths), "validation: the next {} images of the same "
                     "class-balanced order") if validation else None
    held = _without(images, set(first.paths),
                    "{} images in neither the calibration nor the validation split" if validation
                    else "{} images not in the calibration split")
    return chosen, valid, held


def _without(images: ImageList, taken: set, subset: str) -> ImageList:
    rest = [i for i, p in enumerate(images.paths) if p not in taken]
    return ImageList(images.root, [images.paths[i] for i in rest],
                     None if images.labels is None else [images.labels[i] for i in rest],
                     images.classes, images.unreadable, subset.format(len(rest)))


def _rate_grid(method: str, rates: Optional[str]) -> tuple[Optional[str], list]:
    """(parameter name, values) searched besides the sites: ``"name=v1,v2"``, or the method's
    share-type rate on (0.5, 0.7, 0.9), or none."""
    if rates:
        name, eq, values = rates.partition("=")
        if not eq or not values.strip():
            raise ParameterError(f"rates={rates!r}: write NAME=V1,V2,... (e.g. keep=0.5,0.7)")
        parsed = [_literal(v) for v in values.split(",") if v.strip()]
        return name.strip(), parsed
    rate = getattr(get_method(method), "rate", None)
    if rate is not None and rate.share:
        return rate.name, list(DEFAULT_SHARE_GRID)
    return None, [None]


#: what a point carries from its stored calibration (or held-out) evaluation
POINT_FIELDS = ("top1", "delta_top1", "kl", "agreement", "images", "labeled", "none_top1",
                "delta_top1_ci")


def _point_fields(ev: dict) -> dict:
    """A point's accuracy fields from the eval payload ``compare`` stores (or from the one
    searches stored before they shared it, which held these fields as they are)."""
    if "eval_images" in ev:
        ev = {**ev, "images": ev["eval_images"], "none_top1": ev["top1"] - ev["delta_top1"],
              "delta_top1_ci": [ev["delta_top1_ci_low"], ev["delta_top1_ci_high"]]}
    return {k: ev[k] for k in POINT_FIELDS}


class _Measurer:
    """Measures configurations (site set, rate) once each, through the store, with the
    measurement kinds ``compare`` uses (``tokenred.measure``)."""

    def __init__(self, model, method: str, params: dict, rate_name: Optional[str], grid: list,
                 keys: Keys, store: ResultsStore, backbone_args: dict,
                 progress: Callable[[str], None]):
        self.model, self.method, self.params = model, method, params
        self.rate_name, self.grid, self.keys, self.store = rate_name, grid, keys, store
        self.backbone_args, self.progress = backbone_args, progress
        self.evaluations = 0            # configurations actually evaluated (tests: resuming: 0)

    def on(self, images: ImageList, split: str) -> "_Measurer":
        """The same measurements on another split of the images."""
        other = copy.copy(self)
        other.keys = dataclasses.replace(self.keys, images=images, search=split)
        return other

    def rate_value(self, rate: Any) -> Any:
        """A rate read back from a DataFrame (NaN, 4.0) as the grid gave it (None, 4)."""
        if rate is None or (isinstance(rate, float) and math.isnan(rate)):
            return None
        return next((g for g in self.grid if g == rate), rate)

    def spec(self, blocks: tuple, rate: Any) -> str:
        rate = self.rate_value(rate)
        if not blocks:
            return "none"
        params = dict(self.params)
        if self.rate_name is not None and rate is not None:
            params[self.rate_name] = rate
        params["where"] = "blocks:" + "/".join(str(b) for b in sorted(blocks))
        return format_method_spec(self.method, params)

    def take(self, specs: Sequence[str], kinds: Sequence[str]) -> None:
        """Measure ``kinds`` of ``specs`` the store lacks (next to ``none``, as compare does)."""
        todo = {s: [k for k in kinds if self.keys.get(self.store, s, k) is None] for s in specs}
        todo = {s: k for s, k in todo.items() if k}
        if not todo:
            return
        prepared, refused = Prepared.install(
            self.model, list(dict.fromkeys(["none", *todo])), "none",
            backbone=self.keys.backbone, input_size=self.keys.input_size,
            backbone_args=self.backbone_args, images=self.keys.images)
        if refused:
            raise ParameterError(next(iter(refused.values())))
        if "eval" in kinds:
            images = self.keys.images
            self.progress(f"search: evaluate {len(todo)} configuration(s) on "
                          f"{len(images.paths)} images ({images.subset})")
            self.evaluations += sum("eval" in k for k in todo.values())
        measure(prepared, todo, self.keys.protocol, self.keys, self.store, lambda msg: None)
        prepared.remove()

    def measure(self, configs: Sequence[tuple[tuple, Any]]) -> dict[str, dict]:
        """Points (spec, blocks, rate, gflops and the accuracy fields) of every configuration;
        those not in the store are measured in one evaluation pass, next to ``none``."""
        specs = {self.spec(b, r): (b, r) for b, r in configs}
        specs.setdefault("none", ((), None))
        self.take(list(specs), ("flops", "eval"))
        out = {}
        for spec, (blocks, rate) in specs.items():
            out[spec] = {"spec": spec, "blocks": tuple(sorted(blocks)),
                         "rate": self.rate_value(rate),
                         **_point_fields(self.keys.get(self.store, spec, "eval")),
                         "gflops": self.keys.get(self.store, spec, "flops")["gflops"]}
        return out


def pareto_front(points: pd.DataFrame, accuracy: str, tolerance: float = 0.0) -> pd.DataFrame:
    """Points that no other point beats on both GFLOPs (lower) and ``accuracy`` (higher),
    ascending GFLOPs (``tokenred.report.pareto_front``, which the report plots also use).
    ``tolerance`` > 0 widens it: a point is dropped only when a point with no more GFLOPs is at
    least ``tolerance`` more accurate."""
    from .report import pareto_front as front_indices

    ordered = points.sort_values(["gflops", accuracy], ascending=[True, False]).reset_index(
        drop=True)
    keep = front_indices(list(ordered["gflops"]), list(ordered[accuracy]), x_larger_better=False,
                         tolerance=tolerance)
    return ordered.loc[sorted(keep)].reset_index(drop=True)


#: how far below the calibration front (top-1 points) a point may lie and still be evaluated on
#: the validation split: one calibration image is 0.39 points at 256 images, so the strict front
#: is decided by a few images' noise
SHORTLIST_TOLERANCE = 1.0


def search(backbone: str, method: str, data: str, *,
           budget: Optional[str] = None, max_drop: Optional[float] = None,
           rates: Optional[str] = None, candidates: Any = None, calibration: int = 256,
           validation: Optional[int] = None,
           rounds: int = 1, input_size: Optional[int] = None, pretrained: bool = True,
           checkpoint: Optional[str] = None, backbone_kwargs: Optional[dict] = None,
           device: str = "cpu", eval_batch_size: int = 64, batch_size: int = 8,
           store: Union[None, str, ResultsStore] = None,
           progress: Optional[Callable[[str], None]] = None) -> SearchResult:
    """Search ``method``'s sites (and rate) on the registered backbone ``backbone`` (by name: its
    weights identify the stored measurements) for ``budget`` (``"gflops=3.0"``,
    ``"speedup=1.3"``, ``"latency_ms=20"``) or ``max_drop`` (points of validation top-1).
    ``method``: a name or spec whose fixed parameters are kept (``"quartermap:mode=avg"``);
    ``rates``: ``"keep=0.5,0.7,0.9"`` (default: a share-type rate on 0.5/0.7/0.9, else sites
    only); ``candidates``: a ``where`` selector limiting the sites tried (default all of the
    method's kind); ``calibration`` / ``validation``: the sizes of the first two splits
    (``split_images``). See the module docstring for the procedure."""
    from .validate import backbone_input_size

    if (budget is None) == (max_drop is None):
        raise ParameterError("search: give exactly one of budget (gflops=, speedup=, "
                             "latency_ms=) or max_drop")
    target = None
    if budget is not None:
        kind, _, value = str(budget).partition("=")
        if kind.strip() not in BUDGET_KINDS:
            raise ParameterError(f"budget={budget!r}: write KIND=VALUE with KIND one of "
                                 f"{BUDGET_KINDS}")
        target = parse_target(budget) if kind.strip() != "latency_ms" else ("latency_ms",
                                                                             float(value))
    if max_drop is not None and max_drop < 0:
        raise ParameterError(f"max_drop={max_drop}: give a non-negative number of points")
    report = progress or (lambda msg: None)
    name, params = parse_method_spec(method)
    if "where" in params:
        raise ParameterError("search chooses where=; leave it out of the method spec (limit the "
                             "sites with candidates=)")
    get_method(name)(**params)                      # bad parameters fail before any work
    rate_name, grid = _rate_grid(name, rates)
    dev = resolve_device(device)
    if not isinstance(backbone, str):
        raise ParameterError("search: pass the backbone by name (its weights identify the "
                             "stored measurements)")
    bname, kwargs = backbone, dict(backbone_kwargs or {})
    size = backbone_input_size(bname, kwargs, input_size)
    model = build_backbone(bname, size, pretrained, 0, checkpoint, kwargs).eval().to(dev)
    on_gpu = dev.type == "cuda"   # compare's default timing protocol
    protocol = Protocol(dev, torch.float32, False, batch_size, eval_batch_size,
                        50 if on_gpu else 3, 30 if on_gpu else 10, 3,
                        scan=resolve_backend(None, dev))
    kinds = get_method(name).kinds
    sites = [s for s in adapter_for(model).sites() if s.kind in kinds]
    if candidates is not None:
        sites = [s for s in select_sites(sites, candidates)]
    if not sites:
        raise ParameterError(f"search: {bname} has no {sorted(kinds)} site for {name}")
    calib, valid, held = split_images(scan_folder(data), calibration, validation)
    own_store = not isinstance(store, ResultsStore)
    if isinstance(store, str):
        import os

        os.makedirs(store, exist_ok=True)
    db = ResultsStore.in_run_dir(store) if isinstance(store, str) else (store or ResultsStore())
    try:
        keys = Keys(bname, size, weights_identity(bname, 0, pretrained, checkpoint, kwargs),
                    protocol, calib, search="calibration", scans=runs_selective_scan(model))
        meter = _Measurer(model, name, params, rate_name, grid, keys, db, kwargs, report)
        blocks = [s.block for s in sites]
        sensitivity = _sensitivity(meter, blocks, grid)
        points = _greedy(meter, blocks, grid, report)
        accuracy = "delta_top1" if bool(points["labeled"].iloc[0]) else "neg_kl"
        for _ in range(rounds):
            points = _local_search(meter, points, blocks, grid, accuracy)
        front = pareto_front(points, accuracy)
        # the candidates the budget chooses from: the front, widened where a validation split
        # will tell the points apart
        shortlist = front if valid is None else pareto_front(
            points, accuracy, SHORTLIST_TOLERANCE if accuracy == "delta_top1" else 0.0)
        if target is not None and target[0] in ("speedup", "latency_ms"):
            shortlist = _time_front(meter, shortlist, report)
        if valid is not None:
            shortlist = _validate_front(meter.on(valid, "validation"), shortlist)
        chosen = _recommend(shortlist, target, max_drop, accuracy)
        front = shortlist[shortlist["spec"].isin(set(front["spec"]))].reset_index(drop=True)
        held_out = _evaluate_held_out(meter, chosen, held)
    finally:
        if own_store:
            db.close()
    splits = {name: {"images": len(split.paths), "subset": split.subset, "digest": split.digest}
              for name, split in (("calibration", calib), ("validation", valid),
                                  ("held_out", held)) if split is not None}
    return SearchResult(points, front, sensitivity, None if chosen is None else chosen["spec"],
                        held_out, splits, budget if budget else f"max_drop={max_drop}",
                        shortlist)


def _frame(measured: dict) -> pd.DataFrame:
    df = pd.DataFrame(list(measured.values()))
    df["neg_kl"] = -df["kl"]
    df["sites"] = df["blocks"].apply(len)
    return df


def _sensitivity(meter: _Measurer, blocks: list, grid: list) -> pd.DataFrame:
    measured = meter.measure([((b,), r) for b in blocks for r in grid])
    df = _frame(measured)
    base = df.loc[df["spec"] == "none", "gflops"].iloc[0]
    df = df[df["spec"] != "none"].copy()
    df["block"] = df["blocks"].apply(lambda t: t[0])
    df["gflops_saved"] = base - df["gflops"]
    return df[["block", "rate", "spec", "gflops", "gflops_saved", "delta_top1", "kl",
               "agreement"]].sort_values(["rate", "block"], key=lambda c: c.map(str)).reset_index(
        drop=True)


def _greedy(meter: _Measurer, blocks: list, grid: list, report) -> pd.DataFrame:
    seen: dict[str, dict] = {}
    for rate in grid:
        current: tuple = ()
        last = meter.measure([(current, rate)])["none"]
        seen["none"] = last
        remaining = list(blocks)
        while remaining:
            tried = meter.measure([(current + (b,), rate) for b in remaining])
            tried.pop("none", None)
            seen.update(tried)

            def value(p: dict) -> float:   # GFLOPs saved per KL added (ties: fewer GFLOPs)
                return (last["gflops"] - p["gflops"]) / max(p["kl"] - last["kl"], 1e-6)

            best = max(tried.values(), key=value)
            remaining.remove(next(b for b in best["blocks"] if b not in current))
            current, last = best["blocks"], best
            report(f"search: rate {rate}: {len(current)} site(s), {best['gflops']:.3f} GFLOPs, "
                   f"KL {best['kl']:.4f}")
    return _frame(seen)


def _local_search(meter: _Measurer, points: pd.DataFrame, blocks: list, grid: list,
                  accuracy: str) -> pd.DataFrame:
    front = pareto_front(points, accuracy)
    configs = set()
    for _, row in front.iterrows():
        have, rate = tuple(row["blocks"]), meter.rate_value(row["rate"])
        if not have:
            continue
        for b in blocks:
            if b not in have:
                configs.add((tuple(sorted(have + (b,))), rate))
        for b in have:
            if len(have) > 1:
                configs.add((tuple(x for x in have if x != b), rate))
        if rate in grid:
            i = grid.index(rate)
            for j in (i - 1, i + 1):
                if 0 <= j < len(grid):
                    configs.add((have, grid[j]))
    if not configs:
        return points
    measured = meter.measure(sorted(configs, key=str))
    merged = {p["spec"]: p for p in points.to_dict("records")}
    merged.update(measured)
    return _frame({k: {kk: vv for kk, vv in v.items() if kk not in ("neg_kl", "sites")}
                   for k, v in merged.items()})


def _time_front(meter: _Measurer, front: pd.DataFrame, report) -> pd.DataFrame:
    specs = list(front["spec"])
    report(f"search: time {len(specs)} front point(s)")
    meter.take(specs, ("timing",))
    timing = [meter.keys.get(meter.store, s, "timing") for s in specs]
    front = front.copy()
    front["speedup"] = [t["speedup"] for t in timing]
    front["latency_ms"] = [t["latency_median_ms"] for t in timing]
    return front


def _validate_front(meter: _Measurer, front: pd.DataFrame) -> pd.DataFrame:
    """The shortlist's points on the validation split (``val_*`` columns): the recommendation is
    chosen on them, so picking the luckiest of many calibration points does not decide it."""
    got = meter.measure([(tuple(r["blocks"]), r["rate"]) for _, r in front.iterrows()])
    front = front.copy()
    for name in ("top1", "delta_top1", "kl"):
        front[f"val_{name}"] = [got[spec][name] for spec in front["spec"]]
    front["val_neg_kl"] = -front["val_kl"]
    return front


def _recommend(front: pd.DataFrame, target, max_drop: Optional[float], accuracy: str
               ) -> Optional[dict]:
    """The budget's point: on validation accuracy where the front has it, else calibration."""
    def chosen_on(column: str) -> str:
        return f"val_{column}" if f"val_{column}" in front else column

    accuracy = chosen_on(accuracy)
    if max_drop is not None:
        ok = front[front[chosen_on("delta_top1")] >= -max_drop]
        return None if ok.empty else ok.sort_values("gflops").iloc[0].to_dict()
    kind, value = target
    column = {"gflops": "gflops", "speedup": "speedup", "latency_ms": "latency_ms"}[kind]
    ok = front[front[column] >= value] if kind == "speedup" else front[front[column] <= value]
    if ok.empty:
        return None
    return ok.sort_values([accuracy, "gflops"], ascending=[False, True]).iloc[0].to_dict()


def _evaluate_held_out(meter: _Measurer, chosen: Optional[dict], held: ImageList) -> dict:
    if chosen is None or chosen["spec"] == "none":
        return {}
    # the same measurement on the other images (stored too: a re-run evaluates nothing)
    held_meter = meter.on(held, "held_out")
    got = held_meter.measure([(chosen["blocks"], chosen["rate"])])[chosen["spec"]]
    meter.evaluations += held_meter.evaluations
    return {k: got[k] for k in ("images", "none_top1", "top1", "delta_top1", "delta_top1_ci",
                                "kl", "agreement")}


def markdown(result: SearchResult, backbone: str, method: str) -> str:
    """The search as a short Markdown report: splits, sensitivity, front, recommendation."""
    cal, held = result.splits["calibration"], result.splits["held_out"]
    valid = result.splits.get("validation")
    chosen_on = ("the front's points on the validation split (val_ columns)" if valid
                 else "the calibration split")
    lines = [f"# Site search: {method} on {backbone}", "",
             f"Budget: `{result.budget}`. Calibration: {cal['images']} images ({cal['subset']}); "
             + (f"validation: {valid['images']} images ({valid['subset']}); " if valid else "")
             + f"held out: {held['images']} images ({held['subset']}). The search runs on the "
             f"calibration split, the recommendation is chosen on {chosen_on}, and only the "
             f"recommended point is evaluated on the held-out images. Δtop-1 and KL are against "
             f"the unreduced model on the same images.", "",
             "## Sensitivity (each site alone)", "",
             _table(result.sensitivity, ["block", "rate", "gflops", "gflops_saved", "delta_top1",
                                         "kl"]), "",
             "## Pareto front (calibration split)", "",
             _table(result.front, ["spec", "gflops", "delta_top1", "kl", "agreement",
                                   "speedup", "latency_ms"]), ""]
    if valid:
        lines += [f"## Shortlist on the validation split (the calibration front widened by "
                  f"{SHORTLIST_TOLERANCE:g} point)", "",
                  _table(result.shortlist, ["spec", "gflops", "delta_top1", "kl",
                                            "val_delta_top1", "val_kl", "speedup",
                                            "latency_ms"]), ""]
    if result.recommended is None:
        lines.append("No measured point meets the budget.")
    else:
        lines.append(f"Recommended: `{result.recommended}`.")
        h = result.held_out
        if h:
            lines.append(f"On the {h['images']} held-out images: top-1 {h['top1']:.2f}% vs "
                         f"{h['none_top1']:.2f}% unreduced (Δ {h['delta_top1']:+.2f}, 95% "
                         f"interval [{h['delta_top1_ci'][0]:+.2f}, {h['delta_top1_ci'][1]:+.2f}]),"
                         f" KL {h['kl']:.4f}.")
    return "\n".join(lines) + "\n"


def _table(df: pd.DataFrame, columns: list) -> str:
    shown = df[[c for c in columns if c in df]].copy()
    for c in shown:
        if shown[c].dtype.kind == "f":
            shown[c] = shown[c].map(lambda v: f"{v:.4f}" if abs(v) < 1 else f"{v:.3f}")
    return shown.to_markdown(index=False)


def write_report(result: SearchResult, out_dir: str, backbone: str, method: str) -> list[str]:
    """``search.md``, ``front.csv``, ``points.csv``, ``sensitivity.csv`` and the two plots
    (``sensitivity.png``: Δtop-1 and GFLOPs saved per site; ``front.png``: every point and the
    front) in ``out_dir``; returns the paths written."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import atomic_write_text

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    tables = [("front", result.front), ("points", result.points),
              ("sensitivity", result.sensitivity)]
    if result.shortlist is not None:
        tables.append(("shortlist", result.shortlist))
    for stem, df in tables:
        path = os.path.join(out_dir, f"{stem}.csv")
        atomic_write_text(path, df.drop(columns=[c for c in ("blocks",) if c in df]).to_csv(
            index=False))
        paths.append(path)
    path = os.path.join(out_dir, "search.md")
    atomic_write_text(path, markdown(result, backbone, method))
    paths.append(path)
    accuracy = "delta_top1" if result.points["labeled"].iloc[0] else "kl"
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    sens = result.sensitivity
    labels = [f"{b}" + ("" if r is None or (isinstance(r, float) and math.isnan(r)) else f"@{r}")
              for b, r in zip(sens["block"], sens["rate"])]
    ax[0].bar(range(len(sens)), sens[accuracy])
    ax[0].set_xticks(range(len(sens)), labels, rotation=90, fontsize=7)
    ax[0].set_ylabel(accuracy + " (calibration)")
    ax[0].set_title("each site alone")
    ax[1].scatter(result.points["gflops"], result.points[accuracy], s=10, color="0.6",
                  label="measured")
    ax[1].plot(result.front["gflops"], result.front[accuracy], "o-", label="front")
    if result.shortlist is not None and f"val_{accuracy}" in result.shortlist:
        ax[1].plot(result.shortlist["gflops"], result.shortlist[f"val_{accuracy}"], "x:",
                   label="shortlist on validation")
    ax[1].set_xlabel("GFLOPs (MACs)")
    ax[1].set_ylabel(accuracy)
    ax[1].legend()
    fig.suptitle(f"{method} on {backbone}")
    fig.tight_layout()
    path = os.path.join(out_dir, "search.png")
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    paths.append(path)
    return paths
