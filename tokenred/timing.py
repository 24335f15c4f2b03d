"""Throughput and latency, measured the same way for every method.

CPU: ``time.perf_counter`` around each forward, thread count recorded. CUDA: a pair of CUDA events
around each forward and an event synchronize, so the GPU's own time is measured. Warm-up
iterations are run first and excluded. Every result carries median, IQR and min latency per batch,
images/s from the median, and the environment it was measured in.

``benchmark_interleaved`` times several models round-robin (A B C A B C ...) so that slow drift of
a noisy machine hits every model alike; ``compare`` uses it, and ratios between its results are
what tables report.

Timing first makes glibc's malloc keep freed memory (``keep_freed_memory``): by default it hands
blocks of a few MiB and up back to the OS on free, and the next forward touches fresh pages, one
page fault per 4 KiB. What that costs is the machine's, not the model's, and it is not the same
for every model: it grows with activation size, so SSMs at batch 8 paid far more than DeiT-S (on
a 2-vCPU VM, MedMamba-T at batch 8: about 290000 faults per forward, and 1.3-2x its time without
them in the runs measured; DeiT-S: none). The setting is recorded in every result's environment.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .flops import resolve_input_shape

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16}


@dataclass
class BenchmarkResult:
    batch_size: int
    median_ms: float
    iqr_ms: float
    min_ms: float
    images_per_s: float
    iters: int
    warmup: int
    times_ms: list[float] = field(repr=False, default_factory=list)
    env: dict[str, Any] = field(repr=False, default_factory=dict)
    #: median of each interleaved round, for paired ratios between models timed together
    round_medians_ms: list[float] = field(repr=False, default_factory=list)

    def as_dict(self, env: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not env:
            del out["env"]
        return out


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: allowed are cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: allowed are cpu, cuda, cuda:N")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: allowed are {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine()


#: glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
#: the heap top glibc may keep unreturned once ``keep_freed_memory`` ran
_KEPT_TOP_BYTES = 1 << 30
_allocator: Optional[tuple[bool, str]] = None   # (kept?, description), once asked


def keep_freed_memory() -> str:
    """Makes glibc's malloc keep freed memory for reuse by this process (no separate mmap per
    large block, no trimming of the heap top below 1 GiB) and returns what the allocator does
    now. Process-wide and lasting, like ``torch.set_num_threads``; the process's footprint stays
    at its peak. Nothing changes where the C library is not glibc, or where the environment has
    ``TOKENRED_MALLOC=default``."""
    global _allocator
    if _allocator is None:
        _allocator = _set_allocator()
    return _allocator[1]


def freed_memory_kept() -> bool:
    """Whether ``keep_freed_memory`` is in effect (it runs here if it has not yet)."""
    keep_freed_memory()
    return _allocator[0]


def _set_allocator() -> tuple[bool, str]:
    if os.environ.get("TOKENRED_MALLOC", "") == "default":
        return False, "C library defaults (TOKENRED_MALLOC=default)"
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
        version.restype = ctypes.c_char_p
        glibc = "glibc " + version().decode()
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):    # (TypeError: no CDLL(None) on Windows)
        return False, "C library defaults (not glibc)"
    no_mmap = mallopt(_M_MMAP_MAX, 0) == 1
    no_trim = mallopt(_M_TRIM_THRESHOLD, _KEPT_TOP_BYTES) == 1
    if no_mmap and no_trim:
        return True, f"{glibc}, freed memory kept (no mmap per block, trim above 1 GiB)"
    return False, (f"{glibc}, mallopt refused the "
                   + " and the ".join(name for name, ok in (("mmap limit", no_mmap),
                                                            ("trim threshold", no_trim)) if not ok))


def environment(device: torch.device, dtype: torch.dtype, amp: bool) -> dict[str, Any]:
    import timm

    from . import __version__

    env = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "tokenred": __version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "amp": amp,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "allocator": _allocator[1] if _allocator else "C library defaults",
    }
    from .kernels import resolve_backend, scan_math

    # the selective-scan backend SSM backbones use here unless a model pins its own
    env["scan_backend"] = resolve_backend(None, device)
    # how the torch scan computes its exponentials here (picked by the machine: kernels docs)
    env["scan_math"] = scan_math(device)
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def _time_calls(fn: Callable[[], Any], n: int, device: torch.device) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn``."""
    out = []
    if device.type == "cuda":
        for _ in range(n):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def _summarise(rounds: Sequence[Sequence[float]], batch: int, warmup: int,
               env: dict) -> BenchmarkResult:
    """Statistics over all timed calls (seconds, grouped by interleaved round)."""
    ms = [t * 1e3 for r in rounds for t in r]
    if len(ms) >= 2:
        q = statistics.quantiles(ms, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    med = statistics.median(ms)
    return BenchmarkResult(batch, med, iqr, min(ms), batch / (med / 1e3), len(ms), warmup, ms, env,
                           [statistics.median(r) * 1e3 for r in rounds])


def benchmark_interleaved(models: Mapping[str, nn.Module], input_size: Union[int, Sequence[int]] = 224,
                          batch_size: int = 1, device: Union[str, torch.device, None] = "cpu",
                          dtype: Union[str, torch.dtype] = "float32", amp: bool = False,
                          warmup: int = 10, iters: int = 30, rounds: int = 5,
                          threads: Optional[int] = None,
                          progress: Optional[Callable[[str], None]] = None,
                          compile: bool = False) -> dict[str, BenchmarkResult]:
    """Time each model on the same input, ``iters`` timed forwards in total spread over
    ``rounds`` round-robin passes, after ``warmup`` untimed forwards each. ``compile``: time
    ``torch.compile(model)`` instead (compiled during the warm-up, which then needs >= 1
    forward); a model it cannot compile raises ``CompileError`` naming it. Runs
    ``keep_freed_memory`` first (see the module docstring)."""
    if batch_size < 1 or iters < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"batch_size={batch_size}, iters={iters}, warmup={warmup}, rounds={rounds}: "
                         f"need batch_size >= 1, iters >= 1, warmup >= 0, rounds >= 1")
    keep_freed_memory()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    if threads is not None:
        torch.set_num_threads(int(threads))
    shape = resolve_input_shape(input_size, batch_size)
    model_dtype = torch.float32 if amp else dt
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dev, model_dtype)
    autocast = (torch.autocast(dev.type, dtype=dt) if amp else contextlib.nullcontext())
    env = environment(dev, dt, amp)
    if compile:
        if warmup < 1:
            raise ValueError("compile=True needs warmup >= 1 (the first forward compiles)")
        env["compiled"] = True
    calls = {}
    for name, model in models.items():
        model.eval().to(dev, model_dtype)
        run = torch.compile(model) if compile else model
        calls[name] = (lambda m=run: m(x))
    rounds = min(rounds, iters)
    per_round = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
    rounds_s: dict[str, list[list[float]]] = {name: [] for name in models}
    with torch.inference_mode(), autocast:
        for name, call in calls.items():
            if progress:
                progress(f"warm-up {name}")
            try:
                _time_calls(call, warmup, dev)
            except Exception as exc:
                if not compile:
                    raise
                raise CompileError(f"torch.compile could not run {name}: {type(exc).__name__}: "
                                   f"{str(exc).strip().splitlines()[0][:300]}") from exc
        for n in per_round:
            for name, call in calls.items():
                if progress:
                    progress(f"timing {name}")
                rounds_s[name].append(_time_calls(call, n, dev))
    return {name: _summarise(r, batch_size, warmup, env) for name, r in rounds_s.items()}


#: fewer timed forwards than this cannot give a median worth a ratio
MIN_TIMED_FORWARDS = 3


def timing_flags(result: BenchmarkResult) -> list[str]:
    """Why a timing cannot mean much (empty when it can): too few timed forwards, no warm-up
    (the first forwards pay allocation and kernel selection), or a spread larger than the
    median. Tables mark such rows instead of printing their speedup as a plain number."""
    flags = []
    if result.iters < MIN_TIMED_FORWARDS:
        flags.append(f"only {result.iters} timed forward(s) (use --iters >= {MIN_TIMED_FORWARDS})")
    if result.warmup == 0:
        flags.append("no warm-up forwards (use --warmup >= 1)")
    if result.iqr_ms > result.median_ms:
        flags.append(f"latency IQR {result.iqr_ms:.1f} ms is larger than its median "
                     f"{result.median_ms:.1f} ms")
    return flags


def paired_ratio(a: BenchmarkResult, b: BenchmarkResult) -> float:
    """Median over interleaved rounds of a's latency / b's latency: drift between rounds cancels."""
    if len(a.round_medians_ms) != len(b.round_medians_ms) or not a.round_medians_ms:
        raise ValueError("paired_ratio needs two results from the same benchmark_interleaved run")
    return statistics.median(x / y for x, y in zip(a.round_medians_ms, b.round_medians_ms, strict=True))


def benchmark(model: nn.Module, input_size: Union[int, Sequence[int]] = 224, batch_size: int = 1,
              device: Union[str, torch.device, None] = "cpu", dtype: Union[str, torch.dtype] = "float32",
              amp: bool = False, warmup: int = 10, iters: int = 30,
              threads: Optional[int] = None, compile: bool = False) -> BenchmarkResult:
    """Latency/throughput of ``model`` on a fixed random batch. ``amp=True`` keeps fp32 weights
    and runs under autocast to ``dtype``; otherwise model and input are cast to ``dtype``.
    ``compile=True`` times ``torch.compile(model)`` (compiled in the warm-up)."""
    return benchmark_interleaved({"model": model}, input_size, batch_size, device, dtype, amp,
                                 warmup, iters, rounds=1, threads=threads, compile=compile)["model"]


class CompileError(RuntimeError):
    """torch.compile could not compile or run a model (the eager path still works)."""
