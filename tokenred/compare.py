"""``tokenred.compare``: every method on every backbone, measured the same way, as one table."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import pandas as pd
import torch

from .apply import UnsupportedSiteKindError, apply
from .backbone import create_backbone
from .checkpoint import load_checkpoint
from .evaluate import distributed_rank_world, evaluate, require_readable, scan_folder
from .fingerprint import file_digest
from .flops import count_flops, count_params
from .kernels import resolve_backend
from .params import ParameterError, parse_method_spec, split_method_list, split_top_level
from .registry import get_backbone, get_method
from .rows import COLUMNS, assemble, make_row  # noqa: F401  (COLUMNS, make_row: public here too)
from .sites import SiteQuantityError
from .store import Key, ResultsStore
from .timing import (benchmark_interleaved, environment, resolve_device, resolve_dtype,
                     timing_flags)
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


def _build_backbone(name: str, input_size: int, pretrained: bool, seed: int,
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
            compile: bool = False) -> pd.DataFrame:
    """Measure ``methods`` (``"name"`` or ``"name:key=value,..."``) on ``backbones``.

    Each method runs on its own copy of the same backbone weights; ``none`` (added first when
    missing) is the baseline for FLOP reduction and speedup. Timing is interleaved round-robin
    across the methods of one backbone. Defaults: on CPU batch 8, 3 warm-up + 10 timed forwards;
    on CUDA batch 128, 50 warm-up + 30 timed (VMamba's protocol). ``checkpoints`` maps backbone
    names to local weight files (keyed in the store by a digest of their bytes); a tensor that
    had to be resampled to fit is refused unless ``allow_resample``. ``backbone_kwargs``: model
    arguments for every backbone (``{"num_classes": 10}``) or per backbone name
    (``{"deit_tiny_patch16_224": {"patch_size": 4}}``); reports show them. timm models are built
    for ``input_size``. ``progress`` is called with a short message at each step. A method that
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
    dev = resolve_device(device)
    on_gpu = dev.type == "cuda"
    batch_size = (128 if on_gpu else 8) if batch_size is None else batch_size
    if eval_batch_size is None:   # evaluation at the model's throughput, not per-batch overhead
        eval_batch_size = batch_size if on_gpu else 64
    warmup = (50 if on_gpu else 3) if warmup is None else warmup
    iters = (30 if on_gpu else 10) if iters is None else iters
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
    transform_overrides = check_transform_overrides(transform_overrides)
    kwargs_of = _kwargs_per_backbone(backbone_kwargs, backbone_names)
    pretrained_of = _pretrained_per_backbone(pretrained, backbone_names)
    size_of = {b: backbone_input_size(b, kwargs_of[b], input_size) for b in backbone_names}
    for b in backbone_names:
        preflight(b, kwargs_of[b], size_of[b],
                  [(s.text, s.params["where"]) for s in specs if "where" in s.params])
    if num_workers < 0:
        raise ParameterError(f"num_workers={num_workers}: give 0 or more")
    folders = _per_backbone(data, backbone_names, None)
    scanned = {f: scan_folder(f).head(limit) for f in dict.fromkeys(folders.values()) if f}
    images_of = {b: scanned[f] if f else None for b, f in folders.items()}
    weights_of = {b: _weights_identity(b, seed, pretrained_of[b], checkpoints.get(b), kwargs_of[b])
                  for b in backbone_names}
    with _opened_store(store, log) as store:
        report = progress or (lambda msg: None)
        dtype_text = str(resolve_dtype(dtype)).replace("torch.", "") + ("+amp" if amp else "")
        device_text = str(dev)
        scan = resolve_backend(None, dev)   # the SSM scan that runs (process default)

        def variant_of(bname: str, kind: str) -> str:
            # what decides the value, by content: weights by digest, data by its file list
            weights = weights_of[bname]
            if kind in ("timing", "match"):   # a speed match depends on the timing protocol too
                protocol = {"warmup": warmup, "iters": iters, "rounds": rounds, "threads": threads}
                if scan != "torch":   # (keys stored before other CPU scans existed stay valid)
                    protocol["scan_backend"] = scan
                if compile:
                    protocol["compile"] = True
                return weights + json.dumps(protocol)
            if kind == "eval":
                images = images_of[bname]
                return weights + json.dumps({"data": images.digest, "subset": images.subset,
                                             "transform": transform_overrides}, sort_keys=True)
            return weights if kind == "flops" else ""

        def key(bname: str, spec: MethodSpec, kind: str) -> Key:
            return Key(bname, spec.text, size_of[bname], batch_size, dtype_text, device_text, kind,
                       variant_of(bname, kind))

        run_env = environment(dev, resolve_dtype(dtype), amp)   # stored with every measurement

        def kinds_of(bname: str) -> tuple[str, ...]:
            return ("flops", "timing") + (("eval",) if images_of[bname] is not None else ())

        base_spec = next(s for s in specs if s.is_baseline)
        targets = _match_targets(match)
        plan = {b: specs for b in backbone_names}
        labels: dict[tuple[str, str], str] = {}
        match_gaps: list[dict] = []
        if targets:
            def build(bname: str) -> torch.nn.Module:
                return _build_backbone(bname, size_of[bname], pretrained_of[bname], seed,
                                       checkpoints.get(bname), kwargs_of[bname], allow_resample)

            def time_pair(bname: str, base: torch.nn.Module, model: torch.nn.Module) -> float:
                res = benchmark_interleaved({"none": base, "x": model}, size_of[bname], batch_size,
                                            dev, dtype, amp, warmup, iters, 2, threads)
                return res["x"].images_per_s / res["none"].images_per_s

            for bname in backbone_names:
                plan[bname], gaps = _solve_matches(bname, specs, targets, store, key, build,
                                                   size_of[bname], time_pair, labels, report)
                match_gaps.extend(gaps)
        # under torch.distributed: rank 0 counts, times (one device per configuration) and writes
        # the store; every rank evaluates its shard of the images
        rank, world = distributed_rank_world()
        lead = rank == 0
        for bname in backbone_names:
            # every rank reads the same stored state before deciding what to measure
            _barrier(world)
            input_size, images = size_of[bname], images_of[bname]
            specs_here = plan[bname]
            todo = {spec.text: [k for k in kinds_of(bname)
                                if store.get(key(bname, spec, k)) is None]
                    for spec in specs_here if store.get(key(bname, spec, "unsupported")) is None}
            if not any(todo.values()):
                report(f"{bname}: all stored, skipped")
                continue
            report(f"{bname}: build")
            build_notes: list[str] = []
            base = _build_backbone(bname, input_size, pretrained_of[bname], seed,
                                   checkpoints.get(bname), kwargs_of[bname], allow_resample,
                                   build_notes)
            n_params = count_params(base)
            models, handles = {}, {}
            for spec in specs_here:
                # the baseline also runs when others need it (speedup/Δtop-1 from the same pass)
                if spec.text not in todo or (not todo[spec.text] and not spec.is_baseline):
                    continue
                model = copy.deepcopy(base)
                params = dict(spec.params)
                where = params.pop("where", None)
                try:
                    handles[spec.text] = apply(model, spec.name, where=where, **params)
                except (UnsupportedSiteKindError, SiteQuantityError, ParameterError) as exc:
                    # a method that cannot serve this backbone's site kinds (or these parameters on
                    # them: random_drop's r on a grid) is a gap in the table, not a failure of the
                    # whole comparison; parameters bad everywhere were refused before measuring
                    if lead:
                        store.put(key(bname, spec, "unsupported"),
                                  {"reason": str(exc), "env": run_env})
                    report(f"{bname} {spec.text}: not supported, skipped")
                    continue
                models[spec.text] = model
                if "flops" in todo[spec.text] and lead:
                    report(f"{bname} {spec.text}: count FLOPs")
                    count = count_flops(model, input_size)
                    store.put(key(bname, spec, "flops"), {
                        "n_params": n_params, "gflops": count.gflops,
                        "tokens_out": getattr(handles[spec.text].state, "tokens_out", None),
                        "uncounted": count.uncounted, "env": run_env,
                        "match": labels.get((bname, spec.text)), "notes": build_notes,
                        "backbone_args": kwargs_of[bname]})
            del base
            by_text = {s.text: s for s in specs_here}
            timed = [t for t in models if "timing" in todo[t]] if lead else []
            if timed:
                group = {t: models[t] for t in models if t in timed or t == base_spec.text}
                results = benchmark_interleaved(group, input_size, batch_size, dev, dtype, amp,
                                                warmup, iters, rounds, threads,
                                                progress=lambda m, b=bname: report(f"{b} {m}"),
                                                compile=compile)
                ips0 = results[base_spec.text].images_per_s
                base_flags = timing_flags(results[base_spec.text])
                for t in timed:
                    res = results[t]
                    # a speedup is a ratio: it means nothing when either side's timing does not
                    flags = timing_flags(res) + [f"baseline: {f}" for f in base_flags
                                                 if t != base_spec.text]
                    store.put(key(bname, by_text[t], "timing"), {
                        "images_per_s": res.images_per_s, "speedup": res.images_per_s / ips0,
                        "latency_median_ms": res.median_ms, "latency_iqr_ms": res.iqr_ms,
                        "flags": flags, "env": res.env})
            evaluated = [t for t in models if "eval" in todo[t]]
            if evaluated:
                report(f"{bname}: evaluate on {len(images.paths)} images")
                group = {t: models[t] for t in models if t in evaluated or t == base_spec.text}
                ev = evaluate(group, base_spec.text, images, input_size, eval_batch_size, dev,
                              resolve_dtype(dtype), amp, num_workers, transform_overrides,
                              progress=_eval_progress(bname, report))
                require_readable(ev, images.root)
                top1_base = ev.counts[base_spec.text].metrics(ev.labeled)["top1"]
                for t in evaluated if lead else ():
                    m = ev.counts[t].metrics(ev.labeled)
                    store.put(key(bname, by_text[t], "eval"), {
                        **m, "delta_top1": m["top1"] - top1_base, "eval_images": ev.n_images,
                        "eval_failed": len(ev.failed), "failed_images": ev.failed,
                        "labeled": ev.labeled, "data_config": ev.data_config, "env": run_env,
                        "eval_subset": images.subset, "notes": ev.notes,
                        "eval_batch_size": eval_batch_size})
            for h in handles.values():
                h.remove()
            del models

        _barrier(world)  # rank 0's last writes are visible to every rank
        groups = [(bname, spec.text, batch_size, size_of[bname],
                   {k: key(bname, spec, k) for k in kinds_of(bname) + ("unsupported",)},
                   key(bname, base_spec, "flops"))
                  for bname in backbone_names for spec in plan[bname]]
        return assemble(store, groups, list(match_gaps))


def _eval_progress(bname: str, report: Callable[[str], None]) -> Callable[[int, int], None]:
    state = {"shown": -1}

    def show(done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if percent // 10 != state["shown"] // 10 or done == total:   # every 10%, and the end
            state["shown"] = percent
            report(f"{bname}: evaluated {done}/{total} images")
    return show


def _weights_identity(bname: str, seed: int, pretrained: bool, checkpoint: Optional[str],
                      kwargs: dict) -> str:
    """The store key of a backbone's weights: a checkpoint (or bundled reference weights) by the
    digest of its bytes, published downloads by name, random init by seed."""
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
    return json.dumps({**weights, "kwargs": kwargs}, sort_keys=True, default=str)


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


def _solve_matches(bname: str, specs: list, targets: list, store: ResultsStore, key: Callable,
                   build: Callable, input_size: int, time_pair: Callable, labels: dict,
                   report: Callable) -> tuple[list, list]:
    """The specs to measure on ``bname``: the baseline, then every method solved for every target
    (solutions are stored, so a resumed run does not search again); and the gaps."""
    from .match import rate_of, solve
    from .params import format_method_spec

    base_spec = next(s for s in specs if s.is_baseline)
    out, gaps, base = [base_spec], [], None
    for kind, value in targets:
        target = f"{kind}={value:g}"
        for spec in specs:
            if spec.is_baseline:
                continue
            probe = MethodSpec(f"{spec.text} @ {target}", spec.name, spec.params)
            stored = store.get(key(bname, probe, "match"))
            if stored is None:
                if base is None:
                    report(f"{bname}: build (matching)")
                    base = build(bname)
                report(f"{bname} {spec.text}: solve {target}")
                try:
                    solved = solve(base, spec.name, dict(spec.params), rate_of(get_method(spec.name)),
                                   (kind, value), input_size,
                                   lambda m, b=base: time_pair(bname, b, m))
                    stored = {"params": solved.params, "achieved": solved.achieved,
                              "reason": solved.reason}
                except (UnsupportedSiteKindError, SiteQuantityError, ParameterError) as exc:
                    stored = {"params": None, "achieved": None, "reason": str(exc)}
                store.put(key(bname, probe, "match"), stored)
            if stored["params"] is None:
                gaps.append({"backbone": bname, "method": f"{spec.text} @ {target}",
                             "reason": stored["reason"]})
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
