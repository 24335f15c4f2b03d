"""Measurements, one mechanism for ``compare`` and ``search``.

- **What decides a stored value.** ``Protocol`` holds a run's measuring settings; ``Keys`` one
  backbone's weights and data under it. A key's variant is one JSON object ``{"weights": ...,
  "protocol": ...}``. Keys written before this form (the weights document followed by the
  protocol document) are still found, so old run directories resume and report.
- **Measurement kinds.** ``KINDS``: flops, timing and eval, each a function from prepared models
  (``Prepared``) to one stored payload per method, and the progress steps it reports.
- **The plan.** ``make_plan``: which backbone × method × kind a store lacks, and the progress
  steps measuring them takes. ``measure`` takes one backbone's share of it.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch

from .apply import UnsupportedSiteKindError, apply
from .backbone import create_backbone
from .checkpoint import load_checkpoint
from .evaluate import ImageList, evaluate, require_readable
from .fingerprint import file_digest
from .flops import count_flops, count_params
from .kernels import scan_build
from .params import ParameterError
from .registry import get_backbone
from .sites import SiteQuantityError
from .store import Key, ResultsStore
from .timing import benchmark_interleaved, environment, freed_memory_kept, timing_flags

Report = Callable[[str], None]
#: what a method cannot do on a backbone (a gap in the table, not a failed run)
NOT_SUPPORTED = (UnsupportedSiteKindError, SiteQuantityError, ParameterError)


# -- what decides a value ------------------------------------------------------------------------

@dataclass(frozen=True)
class Protocol:
    """How a run measures: device, precision, timing and evaluation settings."""
    device: torch.device
    dtype: torch.dtype
    amp: bool
    batch_size: int
    eval_batch_size: int
    warmup: int
    iters: int
    rounds: int
    threads: Optional[int] = None
    compile: bool = False
    scan: str = "torch"              # the SSM scan backend that runs
    num_workers: int = 0
    transform_overrides: Optional[dict] = None

    @property
    def dtype_text(self) -> str:
        return str(self.dtype).replace("torch.", "") + ("+amp" if self.amp else "")

    def scan_of(self, scans: bool) -> str:
        """The scan backend in a timing's key: the one that runs, for a backbone with a selective
        scan; for one without (a ViT) it decides nothing, and its keys keep the "torch" every
        one of them has carried (so a change of the default backend re-times only SSMs)."""
        return self.scan if scans else "torch"

    def timing(self, scans: bool = True) -> dict:
        doc = {"warmup": self.warmup, "iters": self.iters, "rounds": self.rounds,
               "threads": self.threads, "scan_backend": self.scan_of(scans),
               "compile": self.compile}
        # a compiled scan's build decides its timings too: a changed kernel (or a build with
        # other flags) is timed again, not reused from a store that timed the old one
        build = scan_build(self.scan_of(scans)) if scans else None
        if build is not None:
            doc["scan_build"] = build
        # the allocator decides timings too (timing.keep_freed_memory): with freed memory kept,
        # timings stored before that setting existed (the C library's defaults) are measured
        # again, not mixed with new ones; without it, they are found as before
        if freed_memory_kept():
            doc["freed_memory_kept"] = True
        return doc

    def env(self) -> dict:
        return environment(self.device, self.dtype, self.amp)


def weights_identity(bname: str, seed: int, pretrained: bool, checkpoint: Optional[str],
                     kwargs: dict) -> dict:
    """A backbone's weights by content: a checkpoint (or bundled reference weights) by the digest
    of its bytes, published downloads by name, random init by seed; and its model arguments."""
    from .reference import get_reference

    reference = get_reference(bname)
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
        weights = {"checkpoint": file_digest(checkpoint)}
    elif pretrained and reference is not None and os.path.isfile(reference.weights_file):
        weights = {"bundled": file_digest(reference.weights_file)}
    else:
        weights = {"pretrained": pretrained, "seed": seed}
    return json.loads(json.dumps({**weights, "kwargs": kwargs}, default=str))


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Keys:
    """The store keys of one backbone's measurements under one protocol. ``search``: the split a
    search measures on (``"calibration"``, ``"validation"``, ``"held_out"``): its measurements are not comparison
    rows, and a comparison never reuses them."""
    backbone: str
    input_size: int
    weights: dict
    protocol: Protocol
    images: Optional[ImageList] = None
    search: Optional[str] = None
    scans: bool = True          # the backbone runs a selective scan (its timing: the backend's)

    def protocol_of(self, kind: str) -> Optional[dict]:
        """What decides ``kind`` beyond the weights (a speed match depends on timing too)."""
        if kind in ("timing", "match"):
            part = self.protocol.timing(self.scans)
        elif kind == "eval":
            part = {"data": self.images.digest, "subset": self.images.subset,
                    "transform": self.protocol.transform_overrides}
        else:
            part = {}
        return {**part, "search": self.search} if self.search else (part or None)

    def key(self, method: str, kind: str) -> Key:
        doc = {"weights": self.weights}
        protocol = self.protocol_of(kind)
        if protocol is not None:
            doc["protocol"] = protocol
        return Key(self.backbone, method, self.input_size, self.protocol.batch_size,
                   self.protocol.dtype_text, str(self.protocol.device), kind, _dumps(doc))

    def legacy(self, method: str, kind: str) -> Optional[Key]:
        """The key the same measurement had before variants were one JSON object; ``None`` for
        a timing (or a speed match) where timing keeps freed memory, which none of those had."""
        weights = _dumps(self.weights)
        p = self.protocol
        if kind in ("timing", "match") and (freed_memory_kept()
                                             or scan_build(p.scan_of(self.scans)) is not None):
            return None       # (no legacy key held either, nor a compiled scan's build)
        if self.search:   # a search's own: batch 1, the split inside the variant
            variant = _dumps({"search": {"weights": weights, "calibration": self.images.digest,
                                         "subset": self.images.subset}})
            return Key(self.backbone, method, self.input_size, 1, "float32", str(p.device),
                       kind, variant)
        if kind in ("timing", "match"):
            timing = {"warmup": p.warmup, "iters": p.iters, "rounds": p.rounds,
                      "threads": p.threads}
            scan = p.scan_of(self.scans)
            if scan != "torch":
                timing["scan_backend"] = scan
            if p.compile:
                timing["compile"] = True
            variant = weights + json.dumps(timing)
        elif kind == "eval":
            variant = weights + _dumps({"data": self.images.digest, "subset": self.images.subset,
                                        "transform": p.transform_overrides})
        else:
            variant = weights if kind == "flops" else ""
        return Key(self.backbone, method, self.input_size, p.batch_size, p.dtype_text,
                   str(p.device), kind, variant)

    def find(self, store: ResultsStore, method: str, kind: str) -> Key:
        """The key ``store`` holds this measurement under (today's form first), else today's."""
        new = self.key(method, kind)
        if store.get(new) is not None:
            return new
        old = self.legacy(method, kind)
        return old if old is not None and store.get(old) is not None else new

    def get(self, store: ResultsStore, method: str, kind: str) -> Optional[dict]:
        return store.get(self.find(store, method, kind))


def is_search_key(key: Key) -> bool:
    """A measurement ``tokenred search`` took for itself (today's or the earlier key form)."""
    if key.variant.startswith('{"search"'):
        return True
    try:
        doc = json.loads(key.variant)
    except ValueError:
        return False
    return isinstance(doc, dict) and bool((doc.get("protocol") or {}).get("search"))


# -- prepared models -----------------------------------------------------------------------------

def build_backbone(name: str, input_size: int, pretrained: bool, seed: int,
                   checkpoint: Optional[str], kwargs: dict, allow_resample: bool = False,
                   notes: Optional[list] = None) -> torch.nn.Module:
    """Build ``name`` with seeded random init; a timm ViT made for another resolution is rebuilt
    for ``input_size`` (timm resamples pretrained position embeddings). A local checkpoint
    replaces the pretrained download (offline clusters keep their weights on disk); a tensor it
    had to resample is refused unless ``allow_resample`` (then said in ``notes``). Weights
    holding NaN/Inf are refused."""
    pretrained = pretrained and checkpoint is None
    torch.manual_seed(seed)
    model = create_backbone(name, pretrained=pretrained, **kwargs)
    grid = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if (get_backbone(name) is None and "img_size" not in kwargs and grid is not None
            and tuple(grid) != (input_size, input_size)):
        torch.manual_seed(seed)
        model = create_backbone(name, pretrained=pretrained, img_size=input_size, **kwargs)
    if checkpoint is not None:
        report = load_checkpoint(model, checkpoint, allow_resample=allow_resample)
        if report.resampled and notes is not None:
            notes.append(report.resampled_text)
    return model


@dataclass
class Prepared:
    """One backbone's models, ready to measure: the unreduced model under ``baseline`` and each
    method installed on its own copy (``handles``: what ``apply`` returned, to remove them)."""
    backbone: str
    input_size: int
    baseline: str
    models: dict[str, torch.nn.Module]
    n_params: int
    backbone_args: dict
    images: Optional[ImageList] = None
    notes: list = field(default_factory=list)
    labels: Mapping[str, str] = field(default_factory=dict)   # method text → match target(s)
    handles: dict = field(default_factory=dict)

    @classmethod
    def install(cls, base: torch.nn.Module, methods: Sequence[str], baseline: str, **info
                ) -> tuple["Prepared", dict[str, str]]:
        """Each of ``methods`` (full specs, ``baseline`` among them) installed on its own copy of
        ``base``; and the methods that cannot run on it, with the reason."""
        prepared = cls(baseline=baseline, models={}, n_params=count_params(base), **info)
        refused = {}
        for spec in methods:
            model = copy.deepcopy(base)
            try:
                prepared.handles[spec] = apply(model, spec)
            except NOT_SUPPORTED as exc:
                refused[spec] = str(exc)
                continue
            prepared.models[spec] = model
        return prepared, refused

    def tokens_out(self, text: str) -> Optional[int]:
        handle = self.handles.get(text)
        return getattr(handle.state, "tokens_out", None) if handle is not None else None

    def remove(self) -> None:
        for handle in self.handles.values():
            handle.remove()
        self.models.clear()


# -- measurement kinds ---------------------------------------------------------------------------

Payloads = Iterator[tuple[str, dict]]


@dataclass(frozen=True)
class Kind:
    """A measurement kind: ``run(prepared, group, texts, protocol, report)`` yields ``(method
    text, payload)`` for each of ``texts`` as soon as it is taken; ``group`` is what runs
    together (``texts``, plus the baseline where ``with_baseline``: a speedup or Δtop-1 comes
    from one pass). ``steps(n in group, protocol, images, world)``: the progress messages it
    reports. ``lead_only``: rank 0 alone measures it under torch.distributed (an evaluation is
    sharded over every rank instead)."""
    name: str
    run: Callable[..., Payloads]
    steps: Callable[[int, Protocol, Optional[ImageList], int], int]
    with_baseline: bool
    lead_only: bool
    needs_images: bool = False


def _flops(prepared: Prepared, group: list, texts: list, protocol: Protocol,
           report: Report) -> Payloads:
    env = protocol.env()
    for text in texts:
        report(f"{prepared.backbone} {text}: count FLOPs")
        count = count_flops(prepared.models[text], prepared.input_size)
        yield text, {"n_params": prepared.n_params, "gflops": count.gflops,
                     "tokens_out": prepared.tokens_out(text), "uncounted": count.uncounted,
                     "env": env, "match": prepared.labels.get(text), "notes": prepared.notes,
                     "backbone_args": prepared.backbone_args}


def _timing(prepared: Prepared, group: list, texts: list, protocol: Protocol,
            report: Report) -> Payloads:
    p = protocol
    results = benchmark_interleaved({t: prepared.models[t] for t in group}, prepared.input_size,
                                    p.batch_size, p.device, p.dtype, p.amp, p.warmup, p.iters,
                                    p.rounds, p.threads, compile=p.compile,
                                    progress=lambda m: report(f"{prepared.backbone} {m}"))
    base = results[prepared.baseline]
    base_flags = timing_flags(base)
    for text in texts:
        res = results[text]
        # a speedup is a ratio: it means nothing when either side's timing does not
        flags = timing_flags(res) + [f"baseline: {f}" for f in base_flags
                                     if text != prepared.baseline]
        yield text, {"images_per_s": res.images_per_s,
                     "speedup": res.images_per_s / base.images_per_s,
                     "latency_median_ms": res.median_ms, "latency_iqr_ms": res.iqr_ms,
                     "flags": flags, "env": res.env}


def _timing_steps(n: int, protocol: Protocol, images, world: int) -> int:
    return n * (1 + min(protocol.rounds, protocol.iters))     # a warm-up, then each round


def _eval(prepared: Prepared, group: list, texts: list, protocol: Protocol,
          report: Report) -> Payloads:
    p, images = protocol, prepared.images
    report(f"{prepared.backbone}: evaluate on {len(images.paths)} images")
    ev = evaluate({t: prepared.models[t] for t in group}, prepared.baseline, images,
                  prepared.input_size, p.eval_batch_size, p.device, p.dtype, p.amp,
                  p.num_workers, p.transform_overrides,
                  progress=_eval_progress(prepared.backbone, p.eval_batch_size, report))
    require_readable(ev, images.root)
    top1_base = ev.counts[prepared.baseline].metrics(ev.labeled)["top1"]
    env = p.env()
    for text in texts:
        m = ev.counts[text].metrics(ev.labeled)
        yield text, {**m, "delta_top1": m["top1"] - top1_base, "eval_images": ev.n_images,
                     "eval_failed": len(ev.failed), "failed_images": ev.failed,
                     "labeled": ev.labeled, "data_config": ev.data_config, "env": env,
                     "eval_subset": images.subset, "notes": ev.notes,
                     "eval_batch_size": p.eval_batch_size}


def _eval_reports(total: int, batch_size: int) -> list[int]:
    """The images-done counts at which an evaluation of ``total`` images reports progress:
    each new tenth, and the end."""
    points, shown, done = [], -1, 0
    while done < total:
        done = min(done + batch_size, total)
        percent = 100 * done // max(total, 1)
        if percent // 10 != shown // 10 or done == total:
            shown = percent
            points.append(done)
    return points


def _eval_progress(bname: str, batch_size: int, report: Report) -> Callable[[int, int], None]:
    points: dict[int, set] = {}

    def show(done: int, total: int) -> None:
        if total not in points:
            points[total] = set(_eval_reports(total, batch_size))
        if done in points[total]:
            report(f"{bname}: evaluated {done}/{total} images")
    return show


def _eval_steps(n: int, protocol: Protocol, images: Optional[ImageList], world: int) -> int:
    shard = -(-len(images.paths) // world)       # rank 0's share, the one the bar shows
    return 1 + len(_eval_reports(shard, protocol.eval_batch_size))


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("flops", _flops, lambda n, p, images, world: n, with_baseline=False, lead_only=True),
    Kind("timing", _timing, _timing_steps, with_baseline=True, lead_only=True),
    Kind("eval", _eval, _eval_steps, with_baseline=True, lead_only=False, needs_images=True),
)}


def kinds_for(images: Optional[ImageList], wanted: Sequence[str] = tuple(KINDS)) -> tuple:
    """The kinds of ``wanted`` that can be taken (an evaluation needs images)."""
    return tuple(k for k in wanted if images is not None or not KINDS[k].needs_images)


def _group(kind: Kind, texts: Sequence[str], baseline: str) -> list[str]:
    extra = [baseline] if kind.with_baseline and baseline not in texts else []
    return extra + list(texts)


def measure(prepared: Prepared, todo: Mapping[str, Sequence[str]], protocol: Protocol,
            keys: Keys, store: ResultsStore, report: Report, lead: bool = True) -> None:
    """Take every kind ``todo`` lists (method text → kinds) on the prepared models, kind by kind
    in ``KINDS`` order, storing each payload as soon as it is taken (rank 0 writes)."""
    for kind in KINDS.values():
        texts = [t for t in prepared.models if kind.name in todo.get(t, ())]
        if not texts or (kind.lead_only and not lead):
            continue
        group = _group(kind, texts, prepared.baseline)
        for text, payload in kind.run(prepared, group, texts, protocol, report):
            if lead:
                store.put(keys.key(text, kind.name), payload)


# -- the plan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackbonePlan:
    """One backbone's share of a plan: its methods in table order, and for each method the
    kinds the store lacks (methods stored as unsupported there have none)."""
    backbone: str
    keys: Keys
    methods: list[str]
    baseline: str
    todo: dict[str, list[str]]

    @property
    def needed(self) -> bool:
        return any(self.todo.values())

    def to_prepare(self) -> list[str]:
        """The methods to install: those with something to measure, and the baseline whenever
        anything is (it runs next to them)."""
        return [t for t in self.methods if self.todo.get(t) or (t == self.baseline and self.needed)]

    def steps(self, world: int = 1) -> int:
        if not self.needed:
            return 1                                     # "all stored, skipped"
        n = 1                                            # build
        for kind in KINDS.values():
            texts = [t for t in self.methods if kind.name in self.todo.get(t, ())]
            if texts:
                n += kind.steps(len(_group(kind, texts, self.baseline)), self.keys.protocol,
                                self.keys.images, world)
        return n


@dataclass(frozen=True)
class Plan:
    backbones: list[BackbonePlan]
    world: int = 1

    @property
    def steps(self) -> int:
        """The progress messages measuring the plan reports (a method found unsupported while
        installing reports fewer)."""
        return sum(b.steps(self.world) for b in self.backbones)


def plan_backbone(store: ResultsStore, keys: Keys, methods: Sequence[str], baseline: str,
                  kinds: Sequence[str]) -> BackbonePlan:
    todo = {t: [k for k in kinds if keys.get(store, t, k) is None]
            for t in methods if keys.get(store, t, "unsupported") is None}
    return BackbonePlan(keys.backbone, keys, list(methods), baseline, todo)
