"""``tokenred.compare``: every method on every backbone, measured the same way, as one table."""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import pandas as pd
import torch

from .backbone import runs_selective_scan
from .evaluate import distributed_rank_world, scan_folder
from .kernels import resolve_backend
from .measure import (NOT_SUPPORTED, BackbonePlan, Keys, Plan, Prepared, Protocol,
                      build_backbone, kinds_for, measure, plan_backbone, weights_identity)
from .params import ParameterError, parse_method_spec, split_method_list, split_top_level
from .registry import get_method
from .rows import COLUMNS, RowSource, assemble, make_row  # noqa: F401  (COLUMNS, make_row: public here too)
from .store import ResultsStore
from .timing import benchmark_interleaved, resolve_device, resolve_dtype
from .validate import (backbone_input_size, check_amp, check_names, check_positive_int,
                       check_transform_overrides, preflight)

DEFAULT_BACKBONES = ("deit_small_patch16_224", "vmamba_tiny_s1l8")
DEFAULT_METHODS = ("none", "quartermap", "tome:r=13", "random_drop")



@dataclass(frozen=True)
class MethodSpec:
    text: str            # as the user wrote it
    name: str
    params: dict

    @classmethod
    def parse(cls, spec: Union[str, "MethodSpec"]) -> "MethodSpec":
        if isinstance(spec, MethodSpec):
            return spec
        name, params = parse_method_spec(spec)
        method = get_method(name)          # unknown names fail here, with close matches
        probe = dict(params)
        probe.pop("where", None)
        method(**probe)                    # bad parameters fail before anything is measured
        return cls(spec.strip(), name, params)

    @property
    def is_baseline(self) -> bool:
        """Plain ``none``: the row every other method on the backbone is compared with."""
        return self.name == "none" and not self.params

    @property
    def params_text(self) -> str:
        return self.text.partition(":")[2]


def as_list(value: Union[str, Sequence[Any]]) -> list:
    if isinstance(value, str):
        return split_top_level(value)
    return list(value)


def as_method_list(value: Union[str, Sequence[Any]]) -> list:
    return split_method_list(value) if isinstance(value, str) else list(value)


def compare(backbones: Union[str, Sequence[str]] = DEFAULT_BACKBONES,
            methods: Union[str, Sequence[str]] = DEFAULT_METHODS, *,
            device: str = "cpu", batch_size: Optional[int] = None,
            input_size: Optional[int] = None, dtype: str = "float32", amp: bool = False,
            warmup: Optional[int] = None, iters: Optional[int] = None, rounds: int = 5,
            threads: Optional[int] = None, pretrained: Union[bool, Sequence[str]] = False,
            seed: int = 0, checkpoints: Optional[dict] = None,
            backbone_kwargs: Optional[dict] = None,
            data: Optional[Union[str, Mapping[str, str]]] = None, limit: Optional[int] = None,
            num_workers: int = 0, eval_batch_size: Optional[int] = None,
            transform_overrides: Optional[dict] = None,
            store: Union[None, str, ResultsStore] = None,
            progress: Optional[Callable[[str], None]] = None,
            match: Union[None, str, Sequence[str], Mapping[str, float]] = None,
            allow_resample: bool = False, log: Optional[dict] = None,
            compile: bool = False,
            on_plan: Optional[Callable[[Plan], None]] = None) -> pd.DataFrame:
    """Measure ``methods`` (``"name"`` or ``"name:key=value,..."``) on ``backbones``.

    Each method runs on its own copy of the same backbone weights; ``none`` (added first when
    missing) is the baseline for FLOP reduction and speedup. Timing is interleaved round-robin
    across the methods of one backbone. Defaults: on CPU batch 8, 3 warm-up + 10 timed forwards;
    on CUDA batch 128, 50 warm-up + 30 timed (VMamba's protocol). ``checkpoints`` maps backbone
    names to local weight files (keyed in the store by a digest of their bytes); a tensor that
    had to be resampled to fit is refused unless ``allow_resample``. ``backbone_kwargs``: model
    arguments for every backbone (``{"num_classes": 10}``) or per backbone name
    (``{"deit_tiny_patch16_224": {"patch_size": 4}}``); reports show them. timm models are built
    for ``input_size``. ``progress`` is called with a short message at each step; ``on_plan``
    with the plan (``tokenred.measure.Plan``: what the store lacks, and ``plan.steps``, the
    progress messages measuring it reports) before measuring starts. A method that
    cannot serve a backbone's site kinds (a sequence-only method on VMamba) is skipped there and
    listed in ``df.attrs["skipped"]``.

    ``input_size``: one size for every backbone, or ``None`` for each backbone's own (its data
    config: 224 for the ImageNet models, 64 for the reference models). ``pretrained``: a bool for
    every backbone, or the names of the backbones that load their pretrained (or bundled) weights.

    ``data``: a folder of images (ImageFolder tree, or flat and unlabeled) to evaluate every method
    on with the backbone's own eval transform (``limit``: a fixed class-balanced subset of N
    images; ``eval_batch_size``: default 64 on CPU, the timing batch on CUDA), or a mapping from
    backbone names to folders (backbones not in it are not evaluated): top-1/top-5 (labeled
    data), Δtop-1 against ``none`` with its 95% paired-bootstrap interval and McNemar's exact p,
    agreement with ``none``'s top-1 and mean KL(none ‖ method). Images that fail to decode are
    skipped and listed in ``df.attrs["failed_images"]``.

    ``store``: a ``ResultsStore`` or a run directory (opened after every setting is checked,
    locked against other processes while measuring, removed again when the run fails before
    measuring anything; ``log`` is recorded in it); every measurement is written there as soon
    as it is taken, and what it already holds (same backbone, method, sizes, dtype, device,
    weights and data by content, protocol) is not measured again. A method timed or evaluated
    in a later run is measured next to a fresh run of ``none``, so its speedup and Δtop-1
    always come from one pass. Every setting is checked before anything is built or measured
    (``tokenred.validate``).

    ``compile``: time ``torch.compile``d models (FLOPs and accuracy are eager; timing rows
    carry the flag in their store key).

    ``match``: compare at a matched budget instead of each method's default — ``"gflops=3.0"``,
    ``"speedup=1.5"`` (measured) or ``"keep=0.7"``, a list of such targets (a sweep: one row per
    method per target) or ``{"gflops": 3.0}``. Every method with a rate parameter is solved for
    each target on each backbone (``tokenred.match``); the row's ``params`` show the solved value,
    ``match`` the target, and a method that cannot meet it is listed in ``df.attrs["skipped"]``.
    """
    specs, entries, targets = _checked_settings(
        backbones, methods, device, batch_size, input_size, dtype, amp, warmup, iters, rounds,
        threads, pretrained, seed, checkpoints, backbone_kwargs, data, limit, num_workers,
        eval_batch_size, transform_overrides, match, compile)
    report = progress or (lambda msg: None)
    rank, world = distributed_rank_world()
    with _opened_store(store, log) as db:
        specs_of, labels, gaps = {}, {}, []
        for entry in entries:
            specs_of[entry.name], found = _solve_matches(entry, specs, targets, db, seed,
                                                         allow_resample, labels, report)
            gaps.extend(found)
        _barrier(world)     # every rank plans from the same stored state
        baseline = next(s for s in specs if s.is_baseline).text
        plan = Plan([plan_backbone(db, e.keys, [s.text for s in specs_of[e.name]], baseline,
                                   kinds_for(e.keys.images)) for e in entries], world)
        if on_plan is not None:
            on_plan(plan)
        for entry, share in zip(entries, plan.backbones):
            _measure_backbone(entry, share, db, seed, allow_resample, labels, report, rank == 0)
        _barrier(world)     # rank 0's last writes are visible to every rank
        return _table(db, plan, labels, gaps)


def _table(store: ResultsStore, plan: Plan, labels: dict, gaps: list) -> pd.DataFrame:
    """The plan's rows, in its order, from what the store now holds."""
    return assemble(store, [RowSource(b.backbone, t, b.keys.protocol.batch_size,
                                      b.keys.input_size,
                                      {k: b.keys.find(store, t, k)
                                       for k in kinds_for(b.keys.images) + ("unsupported",)},
                                      b.keys.find(store, b.baseline, "flops"),
                                      labels.get((b.backbone, t)))
                            for b in plan.backbones for t in b.methods], gaps)


@dataclass(frozen=True)
class _Entry:
    """One backbone's checked settings: how to build it, and the keys of its measurements."""
    name: str
    pretrained: bool
    checkpoint: Optional[str]
    kwargs: dict
    keys: Keys

    def build(self, seed: int, allow_resample: bool, notes: Optional[list] = None):
        return build_backbone(self.name, self.keys.input_size, self.pretrained, seed,
                              self.checkpoint, self.kwargs, allow_resample, notes)


def _checked_settings(backbones, methods, device, batch_size, input_size, dtype, amp, warmup,
                      iters, rounds, threads, pretrained, seed, checkpoints, backbone_kwargs,
                      data, limit, num_workers, eval_batch_size, transform_overrides, match,
                      compile) -> tuple[list, list, list]:
    """Every setting checked before anything is built or measured (``tokenred.validate``): the
    method specs (baseline first when it was missing), one entry per backbone (with the keys of
    its measurements under the run's protocol) and the match targets."""
    dev = resolve_device(device)
    on_gpu = dev.type == "cuda"
    batch_size = (128 if on_gpu else 8) if batch_size is None else batch_size
    if eval_batch_size is None:   # evaluation at the model's throughput, not per-batch overhead
        eval_batch_size = batch_size if on_gpu else 64
    backbone_names = as_list(backbones)
    specs = [MethodSpec.parse(m) for m in as_method_list(methods)]
    check_names("backbones", backbone_names)
    check_names("methods", [s.text for s in specs])
    for what, value in (("batch size", batch_size), ("eval batch size", eval_batch_size)):
        check_positive_int(value, what, "images")
    check_amp(amp, resolve_dtype(dtype))
    if not any(s.is_baseline for s in specs):
        specs.insert(0, MethodSpec("none", "none", {}))
    checkpoints = dict(checkpoints or {})
    unknown = sorted(set(checkpoints) - set(backbone_names))
    if unknown:
        raise ParameterError(f"checkpoint given for {unknown}, which is not among the backbones "
                             f"{backbone_names}")
    protocol = Protocol(dev, resolve_dtype(dtype), amp, batch_size, eval_batch_size,
                        (50 if on_gpu else 3) if warmup is None else warmup,
                        (30 if on_gpu else 10) if iters is None else iters, rounds, threads,
                        compile, resolve_backend(None, dev), num_workers,
                        check_transform_overrides(transform_overrides))
    kwargs_of = _kwargs_per_backbone(backbone_kwargs, backbone_names)
    pretrained_of = _pretrained_per_backbone(pretrained, backbone_names)
    size_of = {b: backbone_input_size(b, kwargs_of[b], input_size) for b in backbone_names}
    scans = {b: runs_selective_scan(preflight(b, kwargs_of[b], size_of[b],
                                              [(s.text, s.params["where"]) for s in specs
                                               if "where" in s.params]))
             for b in backbone_names}
    if num_workers < 0:
        raise ParameterError(f"num_workers={num_workers}: give 0 or more")
    folders = _per_backbone(data, backbone_names, None)
    scanned = {f: scan_folder(f).head(limit) for f in dict.fromkeys(folders.values()) if f}
    entries = [_Entry(b, pretrained_of[b], checkpoints.get(b), kwargs_of[b],
                      Keys(b, size_of[b], weights_identity(b, seed, pretrained_of[b],
                                                           checkpoints.get(b), kwargs_of[b]),
                           protocol, scanned[folders[b]] if folders[b] else None,
                           scans=scans[b]))
               for b in backbone_names]
    return specs, entries, _match_targets(match)


def _measure_backbone(entry: _Entry, share: BackbonePlan, store: ResultsStore, seed: int,
                      allow_resample: bool, labels: dict, report: Callable[[str], None],
                      lead: bool) -> None:
    """Build the backbone, install every method its share needs, and measure what it lacks.
    Under torch.distributed rank 0 counts, times (one device per configuration) and writes;
    every rank evaluates its shard of the images."""
    if not share.needed:
        report(f"{entry.name}: all stored, skipped")
        return
    report(f"{entry.name}: build")
    notes: list[str] = []
    base = entry.build(seed, allow_resample, notes)
    prepared, refused = Prepared.install(
        base, share.to_prepare(), share.baseline, backbone=entry.name,
        input_size=entry.keys.input_size, backbone_args=entry.kwargs,
        images=entry.keys.images, notes=notes,
        labels={t: label for (b, t), label in labels.items() if b == entry.name})
    del base
    for text, reason in refused.items():
        # a method that cannot serve this backbone's site kinds (or these parameters on them:
        # random_drop's r on a grid) is a gap in the table, not a failure of the comparison;
        # parameters bad everywhere were refused before measuring
        if lead:
            store.put(entry.keys.key(text, "unsupported"),
                      {"reason": reason, "env": entry.keys.protocol.env()})
        report(f"{entry.name} {text}: not supported, skipped")
    measure(prepared, share.todo, entry.keys.protocol, entry.keys, store, report, lead)
    prepared.remove()


def _kwargs_per_backbone(value: Optional[Mapping], names: list[str]) -> dict[str, dict]:
    """Model arguments: one dict for every backbone, or a dict per backbone name."""
    value = dict(value or {})
    if value and all(k in names and isinstance(v, Mapping) for k, v in value.items()):
        return {b: dict(v) for b, v in _per_backbone(value, names, {}).items()}
    nested = [k for k, v in value.items() if isinstance(v, Mapping)]
    if nested:
        raise ParameterError(f"backbone arguments for {nested}, which is not among the backbones "
                             f"{names}")
    return {b: dict(value) for b in names}


@contextlib.contextmanager
def _opened_store(store: Union[None, str, os.PathLike, ResultsStore],
                  log: Optional[dict]) -> Iterator[ResultsStore]:
    """The store to measure into: the given one, an in-memory one, or a run directory's, locked
    while it measures (``log`` recorded in it); a run that fails before measuring anything
    leaves no run directory behind."""
    if not isinstance(store, (str, os.PathLike)):
        yield store if store is not None else ResultsStore(":memory:")
        return
    run_dir = os.fspath(store)
    lead = distributed_rank_world()[0] == 0
    created = not os.path.exists(run_dir)
    opened = None
    try:
        opened = ResultsStore.in_run_dir(run_dir, lock=lead)
        if log is not None and lead:
            opened.log_run(log)
        yield opened
    except BaseException:
        if lead and created and (opened is None or len(opened) == 0):
            if opened is not None:
                opened.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if opened is not None:
            opened.close()


def _match_targets(match: Any) -> list[tuple[str, float]]:
    from .match import parse_target

    if match is None:
        return []
    if isinstance(match, Mapping):
        items = [f"{k}={v}" for k, v in match.items()]
    else:
        items = as_list(match) if isinstance(match, str) else list(match)
    targets = [parse_target(t) for t in items]
    if len(set(targets)) != len(targets):
        raise ParameterError(f"a match target is listed twice: {items}")
    return targets


def _solve_matches(entry: _Entry, specs: list, targets: list, store: ResultsStore, seed: int,
                   allow_resample: bool, labels: dict, report: Callable) -> tuple[list, list]:
    """The specs to measure on ``entry``: the baseline, then every method solved for every target
    (solutions are stored, so a resumed run does not search again); and the gaps."""
    from .match import rate_of, solve
    from .params import format_method_spec

    base_spec = next(s for s in specs if s.is_baseline)
    if not targets:
        return specs, []
    bname, keys, protocol = entry.name, entry.keys, entry.keys.protocol
    out, gaps, base = [base_spec], [], None

    def time_pair(model: torch.nn.Module) -> float:
        res = benchmark_interleaved({"none": base, "x": model}, keys.input_size,
                                    protocol.batch_size, protocol.device, protocol.dtype,
                                    protocol.amp, protocol.warmup, protocol.iters, 2,
                                    protocol.threads)
        return res["x"].images_per_s / res["none"].images_per_s

    for kind, value in targets:
        target = f"{kind}={value:g}"
        for spec in specs:
            if spec.is_baseline:
                continue
            probe = f"{spec.text} @ {target}"
            stored = keys.get(store, probe, "match")
            if stored is None:
                if base is None:
                    report(f"{bname}: build (matching)")
                    base = entry.build(seed, allow_resample)
                report(f"{bname} {spec.text}: solve {target}")
                try:
                    solved = solve(base, spec.name, dict(spec.params), rate_of(get_method(spec.name)),
                                   (kind, value), keys.input_size, time_pair)
                    stored = {"params": solved.params, "achieved": solved.achieved,
                              "reason": solved.reason}
                except NOT_SUPPORTED as exc:
                    stored = {"params": None, "achieved": None, "reason": str(exc)}
                store.put(keys.key(probe, "match"), stored)
            if stored["params"] is None:
                gaps.append({"backbone": bname, "method": probe, "reason": stored["reason"]})
                continue
            solved_spec = MethodSpec.parse(format_method_spec(spec.name, stored["params"]))
            if all(s.text != solved_spec.text for s in out):
                out.append(solved_spec)
            # one measured point can meet several targets of a sweep: it says so, once
            previous = labels.get((bname, solved_spec.text))
            labels[(bname, solved_spec.text)] = target if previous is None else f"{previous}, {target}"
    return out, gaps


def _per_backbone(value: Any, names: list[str], default: Any) -> dict:
    """One setting for every backbone, or a mapping by backbone name (others get ``default``)."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ParameterError(f"settings given for {unknown}, which is not among the "
                                 f"backbones {names}")
        return {b: value.get(b, default) for b in names}
    return {b: value if value is not None else default for b in names}


def _pretrained_per_backbone(pretrained: Union[bool, Sequence[str]], names: list[str]) -> dict:
    if isinstance(pretrained, bool):
        return {b: pretrained for b in names}
    chosen = as_list(pretrained)
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ParameterError(f"pretrained weights asked for {unknown}, which is not among the "
                             f"backbones {names}")
    return {b: b in chosen for b in names}


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
