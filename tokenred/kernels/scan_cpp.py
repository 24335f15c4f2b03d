"""The ``cpp`` selective-scan backend: ``scan_cpu.cpp`` compiled on first use
(``torch.utils.cpp_extension``; needs a C++ compiler and the ``ninja`` package, cached per machine
under torch's extension folder, ``TORCH_EXTENSIONS_DIR``).

The kernel runs the sequential recurrence one channel at a time with its N states in registers,
parallel over batch × channels (forward) or batch × group × channel splits (backward, which
recomputes the states instead of storing them); there the softplus/bias of Δ, the D skip and the
z gate are elementwise and stay in PyTorch, so autograd differentiates them, and the kernel's own
backward gives the gradients of the core. Inference on time-major inputs (VMamba's layout) takes a
second kernel that steps through time over blocks of channels, vectorised across them, with the
bias, softplus and D skip fused (``scan_cpp_time_major``); VMamba's whole SS2D cross-scan / scan /
cross-merge has a third (``cross_scan_2d``). B/C given as constant [D, N] are not handled here (no Mamba model
uses them): ``supports`` says so and the dispatcher uses ``torch`` for them.
"""
from __future__ import annotations

import os
import threading
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import auto_check
from .fused import inference_kernel_allowed, needs_grad
from .selective_scan import _softplus, channel_last_like, has_contiguous_channels

_SOURCE = os.path.join(os.path.dirname(__file__), "scan_cpu.cpp")
_lock = threading.Lock()
_module = None
_error: Optional[str] = None


def _compiler_flags() -> tuple:
    """-march=native: the build is for this CPU (the build's name carries a digest of its flags,
    so a shared cache never hands one CPU's build to another); -ffast-math: lets the compiler use
    the math library's vector exp and reassociate the N-state sums (float32 rounding differences
    only). -fopenmp where torch's intra-op threads are OpenMP's: ATen's ``at::parallel_for`` is a
    header template whose ``#pragma omp parallel`` a build without the flag ignores, so every
    kernel ran on one thread whatever ``torch.get_num_threads()`` said (until the twelfth
    session; VMamba-T's stage-0 SS2D kernel at batch 8, 2 threads: 15.4 -> 8.3 ms). On x86-64,
    512-bit vectors where the CPU has them: GCC otherwise prefers 256-bit ones on AVX-512 CPUs,
    and its 16-wide steps made whole forwards 1.02-1.04x (VMamba-T), 1.10-1.18x (MedMamba-T) and
    1.11x (Vim-S) faster on an Intel Xeon (``benchmarks/cpp_flags.py``); on a CPU without
    AVX-512 the flag changes nothing."""
    import platform

    flags = ("-O3", "-march=native", "-ffast-math")
    if torch.backends.openmp.is_available() and platform.system() != "Windows":
        flags += ("-fopenmp",)
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags += ("-mprefer-vector-width=512",)
    return flags


_CFLAGS = _compiler_flags()


def _build_name(cflags: tuple) -> str:
    import hashlib
    import platform

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    with open(_SOURCE, "rb") as f:
        source = f.read()
    digest = hashlib.sha256(cpu.encode() + source + " ".join(cflags).encode()).hexdigest()[:12]
    return f"tokenred_scan_cpu_{digest}"


def load():
    """The compiled extension (built once per machine, then loaded from torch's cache); raises
    RuntimeError with the reason when it cannot be built here."""
    global _module, _error
    with _lock:
        if _module is None and _error is None:
            try:
                _module = _build_falling_back_to_one_thread(_CFLAGS)
            except Exception as exc:  # no compiler, no ninja, a failed build
                _error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
    if _module is None:
        raise RuntimeError(f"the 'cpp' scan backend could not be built here ({_error}); it needs "
                           f"a C++ compiler and `pip install ninja`; 'torch' runs everywhere")
    return _module


def _build_falling_back_to_one_thread(cflags: tuple):
    """``build(cflags)``; where that fails with -fopenmp among them (a compiler without OpenMP,
    as Apple's clang), the build without it, whose kernels run on the calling thread only —
    said once on stderr, since it is slower, not wrong."""
    import sys

    try:
        return build(cflags)
    except Exception:
        if "-fopenmp" not in cflags:
            raise
    module = build(tuple(f for f in cflags if f != "-fopenmp"))
    print("tokenred: the compiled CPU selective scan was built without OpenMP (the compiler "
          "refused -fopenmp): its kernels run on one thread", file=sys.stderr, flush=True)
    return module


def build(cflags: tuple):
    """The extension compiled with ``cflags`` (cached per machine, source and flags: a build of
    other flags is another module; ``benchmarks/cpp_flags.py`` compares them). Raises what the
    build raises."""
    import logging

    name = _build_name(tuple(cflags))
    # (its "No CUDA runtime is found" warning, logged on import, concerns CUDA builds only)
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load as load_extension

        _note_a_first_build(name)
        # (-fopenmp links libgomp.so.1, the runtime torch has loaded already: one thread pool)
        ldflags = ["-fopenmp"] if "-fopenmp" in cflags else []
        return load_extension(name, [_SOURCE], extra_cflags=list(cflags), extra_ldflags=ldflags,
                              verbose=False)
    finally:
        quiet.setLevel(level)


def _note_a_first_build(name: str) -> None:
    """One line on stderr before a build (not before loading a cached one): the first use on a
    machine pauses for it."""
    import sys

    try:
        from torch.utils.cpp_extension import _get_build_directory   # (private: best effort)
        built = os.path.exists(os.path.join(_get_build_directory(name, False), name + ".so"))
    except Exception:
        return
    if not built:
        print("tokenred: building the compiled CPU selective scan (scan backend 'cpp'), once per "
              "machine, ~30 s; --scan-backend torch runs without it", file=sys.stderr, flush=True)


def available() -> bool:
    try:
        load()
    except RuntimeError:
        return False
    return True


@torch.compiler.assume_constant_result   # (decided once per process: a constant in a graph)
def works() -> bool:
    """Whether ``auto`` may pick this backend on CPU: it builds here and its kernels agree with
    the ``torch`` backend on a small scan (``auto_check``: once per process; a failure warns once
    and ``auto`` uses ``torch``)."""
    return auto_check.verified("compiled 'cpp'", torch.device("cpu"), _check)


def _check():
    """True, or why not: the plain and the time-major kernel against ``torch`` on a small scan."""
    from .selective_scan import scan_torch

    args = auto_check.small_scan_inputs()
    expect = scan_torch(**args, delta_softplus=True)
    time_major = dict(args, **{k: args[k].permute(2, 0, 1).contiguous().permute(1, 2, 0)
                               for k in ("u", "delta")})
    for kernel, scan, inputs in (("plain", scan_cpp, args),
                                 ("time-major", scan_cpp_time_major, time_major)):
        verdict = auto_check.agreement(scan(**inputs, delta_softplus=True), expect)
        if verdict is not True:
            return f"its {kernel} kernel: {verdict}"
    return True


def supports(u: Tensor, B: Tensor, C: Tensor) -> bool:
    return u.device.type == "cpu" and B.dim() != 2 and C.dim() != 2


def _time_major_groups(t: Tensor, dtype: torch.dtype) -> Tensor:
    """B or C ([b, N, L] or [b, G, N, L]) as contiguous [b, G, L, N]."""
    from .selective_scan import _grouped

    return _grouped(t).to(dtype).transpose(2, 3).contiguous()


def _back_to(g: Tensor, like: Tensor) -> Tensor:
    g = g.transpose(2, 3)                                   # [b, G, N, L]
    return (g[:, 0] if like.dim() == 3 else g).to(like.dtype)


class _CoreScan(torch.autograd.Function):
    """y = core(u, dt, A, B, C) with the compiled forward and backward."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        ct = u.dtype
        Bt, Ct = _time_major_groups(B, ct), _time_major_groups(C, ct)
        u_c, dt_c, A_c = u.contiguous(), dt.contiguous(), A.to(ct).contiguous()
        y = load().forward(u_c, dt_c, A_c, Bt, Ct)
        ctx.save_for_backward(u_c, dt_c, A_c, Bt, Ct)
        ctx.like = (A, B, C)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, dt, A, Bt, Ct = ctx.saved_tensors
        A0, B0, C0 = ctx.like
        batch, groups = u.shape[0], Bt.shape[1]
        # enough work items for every thread even at batch 1 (partials are summed afterwards)
        splits = max(1, -(-2 * torch.get_num_threads() // (batch * groups)))
        du, ddt, dA, dB, dC = load().backward(u, dt, A, Bt, Ct, grad_y.to(u.dtype), splits)
        return du, ddt, dA.to(A0.dtype), _back_to(dB, B0), _back_to(dC, C0)


def channel_last_inference(u: Tensor, delta: Tensor, B: Tensor, C: Tensor) -> bool:
    """Whether the time-major kernel serves this call: no gradient is needed and u, Δ come with
    contiguous channels (``has_contiguous_channels``: VMamba's time-major views, Vim's linear
    outputs); it then returns y in u's channel-last storage."""
    return (not needs_grad(u, delta, B, C) and has_contiguous_channels(u)
            and has_contiguous_channels(delta))


def scan_cpp_time_major(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                        delta_bias: Optional[Tensor] = None,
                        delta_softplus: bool = False) -> Tensor:
    """Inference on u, Δ with contiguous channels (read through their time and batch strides):
    one kernel pass, stepping through time over blocks of channels, with the bias, softplus, D
    skip and z gate fused (z read where it lies, any strides); returns y as a [b, d, L] view of
    u's channel-last storage (``channel_last_like``: no copy in or out but B/C's small
    [L, b, G, N] one)."""
    from .selective_scan import _grouped

    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    dim = u.shape[1]

    def vector(v: Optional[Tensor]) -> Tensor:
        return (torch.zeros(dim, dtype=ct) if v is None else v.to(ct)).contiguous()

    def channels_last(t: Tensor) -> Tensor:      # [L, b, d], channels contiguous
        t = t.to(ct).permute(2, 0, 1)
        return t if t.shape[2] == 1 or t.stride(2) == 1 else t.contiguous()

    bt, cc = (_grouped(t).to(ct).permute(3, 0, 1, 2).contiguous() for t in (B, C))
    y = channel_last_like(u, ct)
    gate = z.to(ct).permute(2, 0, 1) if z is not None else u.new_empty(0, dtype=ct)
    load().forward_time_major(channels_last(u), channels_last(delta), vector(delta_bias),
                              A.to(ct).contiguous(), bt, cc, vector(D), bool(delta_softplus),
                              gate, y.permute(2, 0, 1))
    return y


def cross_scan_applies(x: Tensor, backend: str, weights: tuple) -> bool:
    """Whether VMamba's fused SS2D inference kernel serves this call: the ``cpp`` backend on a CPU
    map of float32/64 and ``fused.inference_kernel_allowed`` (a jit trace or a dispatch mode, as
    the FLOP counters use, must see the selective-scan op)."""
    if backend != "cpp" or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return inference_kernel_allowed(x, weights)


#: when the fused SS2D kernel computes Δ itself from the low-rank values (R axpys per step over a
#: block of channels, weights in L1) instead of reading a [K, B, L, D] tensor written by a matmul:
#: at small ranks, of any size (a floor on the tensor's size is the second knob: 0). Measured
#: (kernel alone, 2 threads, Intel Xeon, twelfth session, once the kernel ran on both threads):
#: rank 6 (VMamba-T stage 0) at batch 8 9.7 -> 8.2 ms, batch 1 1.38 -> 1.23 ms, a 16 x 16 map
#: at batch 1 0.13 -> 0.12 ms; rank 12 (stage 1) 4.59 -> 4.76 ms at batch 8 and rank 24 (stage 2)
#: 2.58 -> 3.31 ms, so those keep the matmul. (Single-threaded, the fifth session had found the
#: matmul faster below 4 M values.)
IN_KERNEL_DT_MAX_RANK = 8
IN_KERNEL_DT_MIN_VALUES = 0


def map_orders(height: int, width: int) -> Tensor:
    """The four directions' visiting orders of a height x width map's row-major positions, as
    [4, 1, L] int64: row-major, column-major, both reversed."""
    rows = torch.arange(height * width)
    cols = torch.arange(height * width).view(height, width).t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)]).unsqueeze(1)


def cross_scan_2d(x: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor,
                  dt_projs_bias: Tensor, A_logs: Tensor, Ds: Tensor) -> Tensor:
    """VMamba's four-direction cross-scan, selective scan and cross-merge of a channel-last map
    [B, H, W, D] in one kernel pass (inference): the per-token projections run once on the map
    (they do not depend on the direction's order) and the kernel reads every direction at its
    own positions, so the four direction sequences are never built, flipped or merged.
    Same result as the generic path up to float32 rounding."""
    batch, height, width, dim = x.shape
    out = cross_scan(x.reshape(batch, height * width, dim), map_orders(height, width),
                     x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    return out.view(batch, height, width, dim)


def cross_scan_tokens(x: Tensor, by_row: Tensor, by_col: Tensor, x_proj_weight: Tensor,
                      dt_projs_weight: Tensor, dt_projs_bias: Tensor, A_logs: Tensor,
                      Ds: Tensor) -> Tensor:
    """The same kernel on the tokens a grid reducer kept, x [B, T, D]: direction 0 visits them
    in ``by_row`` order (indices into T, [B, T] or shared [T]), direction 1 in ``by_col`` order,
    2 and 3 in both reversed; returns [B, T, D] in x's order (``SS2D.scan_tokens``'s result)."""
    orders = torch.stack([by_row, by_col, by_row.flip(-1), by_col.flip(-1)])
    orders = orders if orders.dim() == 3 else orders.unsqueeze(1)
    return cross_scan(x, orders.to("cpu", torch.long).contiguous(), x_proj_weight,
                      dt_projs_weight, dt_projs_bias, A_logs, Ds)


def cross_scan(x: Tensor, orders: Tensor, x_proj_weight: Tensor, dt_projs_weight: Tensor,
               dt_projs_bias: Tensor, A_logs: Tensor, Ds: Tensor) -> Tensor:
    """The fused kernel on tokens x [B, L, D] whose four directions visit them in ``orders``
    ([4, 1 or B, L], each row a permutation of 0..L-1)."""
    batch, length, dim = x.shape
    k, proj_dim, _ = x_proj_weight.shape
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.numel() == 0:      # (an empty Δ tensor tells the kernel to compute Δ itself)
        return x.new_zeros(x.shape, dtype=ct)
    x = x.to(ct).contiguous()
    rank = dt_projs_weight.shape[2]
    n = (proj_dim - rank) // 2
    proj = F.linear(x.view(batch * length, dim), x_proj_weight.to(ct).reshape(k * proj_dim, dim))
    proj = proj.view(batch * length, k, proj_dim)
    dt_w = dt_projs_weight.to(ct)                                       # [K, D, R]
    if rank <= IN_KERNEL_DT_MAX_RANK and k * x.numel() >= IN_KERNEL_DT_MIN_VALUES:
        # Δ computed in the kernel from proj's low-rank values, dt_w rank-major [K, R, D]
        dts, dt_rank_major = x.new_empty(0), dt_w.transpose(1, 2).contiguous()
    else:
        dts = torch.bmm(proj[..., :rank].transpose(0, 1), dt_w.transpose(1, 2)).view(
            k, batch, length, dim)
        dt_rank_major = x.new_empty(0)
    return load().cross_scan_2d(x, orders, dts, dt_rank_major,
                                proj.view(batch, length, k, proj_dim),
                                (-torch.exp(A_logs.to(ct))).contiguous(),
                                dt_projs_bias.to(ct).reshape(-1).contiguous(),
                                Ds.to(ct).contiguous(), rank, rank + n)


def scan_cpp(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Optional[Tensor] = None, z: Optional[Tensor] = None,
             delta_bias: Optional[Tensor] = None, delta_softplus: bool = False) -> Tensor:
    """The selective scan through the compiled kernel; differentiable (gradients flow to every
    input through the kernel's backward and autograd for the elementwise parts)."""
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[:, None]
    if delta_softplus:
        # torch's own softplus is not vectorised on CPU (14% of a Vim-S forward with this
        # backend); the torch backend's form (vectorised exp and log, as precise as it) works
        # in place on its temporaries, so only where no gradient flows through it
        dt = F.softplus(dt) if needs_grad(dt) else _softplus(dt)
    uu = u.to(ct)
    y = _CoreScan.apply(uu, dt, A, B, C)
    if D is not None:
        y = y + uu * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y
