"""The selective scan (Mamba's S6) that VMamba and MedMamba run after their 2D cross-scan.

Math, per channel d (its group g = d // (D/G)) and time t, with h_0 = 0:

    Δ_t = softplus(δ_t + δ_bias)          (softplus only if ``delta_softplus``)
    h_t = exp(Δ_t A_d) ⊙ h_{t-1} + Δ_t u_t B_{g,t}     h_t ∈ R^N
    y_t = <C_{g,t}, h_t> + D_d u_t          then y_t *= silu(z_t) if z is given

Backends (``backend=`` or ``set_default_backend``):

* ``torch`` — pure PyTorch, any device. A chunked scan: the sequence is cut into chunks of T steps;
  every chunk is scanned from a zero state at once (T vectorised steps, time-major so each step is
  one contiguous in-place multiply-add); the decay products inside each chunk are cumulative
  products of factors in (0, 1] (log-space segment sums, exponentiated: nothing can overflow, and
  no ratio of decays is ever formed); the states entering each chunk come from the same recurrence
  one level up, on the chunk-end states (recursively); a last multiply-add corrects every step.
  Exact up to float32 rounding for any length and any chunk size. On CPU, inference with
  d_state > 1 and a large per-step state (Vim, MedMamba, VMamba v0) instead runs the plain
  recurrence step by step, in cache-sized time blocks (``_scan_stepwise``): there the chunked
  scan's extra passes over [L, N, D] cost more than its fewer steps save. Its exponentials are
  picked by the machine, never by a timing (``scan_math``): on Intel CPUs with MKL the decays
  by exp and torch's softplus, everywhere else exp2 and a softplus of its own.
* ``cpp`` — the sequential recurrence compiled from ``scan_cpu.cpp`` on first use (CPU only; needs
  a C++ compiler and ``ninja``), with its own backward that recomputes the states: the working set
  of one channel stays in cache, so it is the fast CPU path for training and inference (``auto``'s
  choice on CPU; the first use on a machine compiles for ~30 s); constant [D, N] B/C fall back
  to ``torch``.
* ``triton`` — one Triton kernel for CUDA inference (``scan_triton.py``): decays, drives and
  the scan of each tile of steps in registers, with ``tl.associative_scan``; bias, softplus, D
  skip and gate fused. Training and float64 take ``torch``. Tested with Triton's CPU interpreter.
* ``reference`` — the plain sequential loop over time, vectorised over channels (the pattern of
  mamba_ssm's ``selective_scan_ref`` and of VMamba's CPU fallback). For tests and benchmarks.
* ``mamba_ssm`` — ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (CUDA only).

``backend=None`` (the default) means ``auto``: on CPU, ``cpp`` when it builds here and agrees
with ``torch`` on a small check; on CUDA, ``mamba_ssm`` when that package is importable, else
``triton`` when Triton is importable and its kernel compiles and agrees with ``torch`` on a small
check on that device (each check once per process, ``auto_check``; a failure warns once and
``auto`` takes ``torch``); ``torch`` on every other device.

Inference runs through one custom op, ``tokenred::selective_scan``, so that FLOP counters see the
scan as one operation and count it with VMamba's formula 9·B·L·D·N + B·D·L (D = K·d_inner): see
``tokenred/flops.py``. When gradients are needed (training), ``torch`` runs the same chunked scan
in a ``torch.autograd.Function`` whose backward is the adjoint recurrence through the same chunked
kernel (``scan_torch_autograd``); ``reference`` is differentiated by autograd through the loop.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "torch", "cpp", "triton", "reference", "mamba_ssm")
_default_backend = "auto"

_LOG2_E = 1.4426950408889634
#: chunk length of the ``torch`` backend (speed only: results do not depend on it)
DEFAULT_CHUNK = 16
#: elements of one [L, B, D, N] working tensor above which the batch is processed in slices
_MAX_WORK_ELEMENTS = 1 << 27


class ScanBackendError(RuntimeError):
    """The requested scan backend cannot run here (not installed, wrong device, unknown name)."""


def check_backend(name: Optional[str]) -> str:
    name = "auto" if name is None else name
    if name not in BACKENDS:
        raise ScanBackendError(f"unknown selective-scan backend {name!r}; choose one of {BACKENDS}")
    return name


def set_default_backend(name: Optional[str]) -> str:
    """Set the process-wide default backend (used where a model does not pin one); returns the
    previous default."""
    global _default_backend
    previous, _default_backend = _default_backend, check_backend(name)
    return previous


def get_default_backend() -> str:
    return _default_backend


@functools.lru_cache(maxsize=None)   # asked on every CUDA scan call; a failed import is ~50 us
def mamba_ssm_available() -> bool:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:  # ImportError, or a build that fails at import (missing libcudart, ...)
        return False
    return True


def scan_build(backend: str) -> Optional[str]:
    """Which compiled kernel ``backend`` runs, as part of what decides a timing: the ``cpp``
    extension's build (named by a digest of its source, its compiler flags and this CPU's flags;
    the one-thread fallback build is another name) or the Triton kernel's source digest. None
    for the backends written in PyTorch ops (their speed follows torch's version, which every
    timing's environment records)."""
    if backend == "cpp":
        from . import scan_cpp
        return scan_cpp.load().__name__
    if backend == "triton":
        from . import scan_triton
        return scan_triton.source_digest()
    return None


def resolve_backend(name: Optional[str], device: torch.device) -> str:
    """The concrete backend ``name`` stands for on ``device``; explicit choices that cannot run
    raise ``ScanBackendError``."""
    name = check_backend(name if name is not None else _default_backend)
    if device.type == "meta":   # shapes only (the preflight): any backend's answer is torch's
        return "torch"
    if name == "auto":
        if device.type == "cpu":
            from . import scan_cpp
            return "cpp" if scan_cpp.works() else "torch"
        if device.type != "cuda":
            return "torch"
        if mamba_ssm_available():
            return "mamba_ssm"
        from . import scan_triton
        return "triton" if scan_triton.works_on(device) else "torch"
    if name == "triton":
        from . import scan_triton

        if not scan_triton.available():
            raise ScanBackendError("scan backend 'triton' requested but triton is not importable "
                                   "(pip install triton); 'torch' runs everywhere")
        if device.type != "cuda" and not scan_triton.interpreting():
            raise ScanBackendError(f"scan backend 'triton' runs on CUDA tensors only (or on CPU "
                                   f"under TRITON_INTERPRET=1, for tests), got {device.type}; "
                                   f"use 'auto' or 'torch'")
    if name == "mamba_ssm":
        if device.type != "cuda":
            raise ScanBackendError(f"scan backend 'mamba_ssm' runs on CUDA tensors only, got "
                                   f"{device.type}; use 'torch' (any device)")
        if not mamba_ssm_available():
            raise ScanBackendError("scan backend 'mamba_ssm' requested but mamba_ssm is not "
                                   "importable (pip install mamba-ssm --no-build-isolation); "
                                   "'torch' runs everywhere")
    if name == "cpp":
        if device.type != "cpu":
            raise ScanBackendError(f"scan backend 'cpp' runs on CPU tensors only, got "
                                   f"{device.type}; use 'auto' or 'torch'")
        from . import scan_cpp

        try:
            scan_cpp.load()
        except RuntimeError as exc:
            raise ScanBackendError(str(exc)) from None
    return name


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                  z: Optional[Tensor], delta_bias: Optional[Tensor]) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be [batch, channels, length], got {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta {tuple(delta.shape)} must match u {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be [channels={dim}, d_state], got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            ok = t.shape == (dim, n)
        elif t.dim() == 3:
            ok = t.shape == (batch, n, length)
        elif t.dim() == 4:
            ok = t.shape[0] == batch and t.shape[2:] == (n, length) and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(f"selective_scan: {name} must be [channels, d_state], [batch, d_state, "
                             f"length] or [batch, groups, d_state, length] with groups dividing "
                             f"{dim} channels; got {tuple(t.shape)} (u {tuple(u.shape)}, d_state {n})")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"selective_scan: {name} must be [channels={dim}], got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z {tuple(z.shape)} must match u {tuple(u.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported (VMamba/MedMamba use real A)")


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _grouped(t: Tensor) -> Tensor:
    """B or C as [batch, groups, N, L] (a [batch, N, L] tensor is one group)."""
    return t.unsqueeze(1) if t.dim() == 3 else t


def _finish(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def _delta(delta: Tensor, delta_bias: Optional[Tensor], softplus: bool, dtype: torch.dtype) -> Tensor:
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if softplus else dt


# --------------------------------------------------------------------------------------------
# reference: the sequential loop
# --------------------------------------------------------------------------------------------
def scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                   delta_bias: Optional[Tensor] = None, delta_softplus: bool = False) -> Tensor:
    """One step per time index, vectorised over batch and channels; out-of-place, so autograd can
    differentiate through it. Computes in float64 when ``u`` is float64, float32 otherwise."""
    ct = _compute_dtype(u)
    batch, dim, length = u.shape
    uu = u.to(ct)
    dt = _delta(delta, delta_bias, delta_softplus, ct)
    a = A.to(ct)
    decay = torch.exp(dt.unsqueeze(-1) * a[:, None, :])                    # [b, d, L, N]
    if B.dim() == 2:
        drive = (dt * uu).unsqueeze(-1) * B.to(ct)[:, None, :]
    else:
        bg = _grouped(B).to(ct)
        bg = bg.repeat_interleave(dim // bg.shape[1], dim=1)                # [b, d, N, L]
        drive = (dt * uu).unsqueeze(-1) * bg.transpose(-1, -2)
    if C.dim() == 2:
        cc = C.to(ct)[None, :, None, :].expand(batch, dim, length, -1)
    else:
        cg = _grouped(C).to(ct)
        cc = cg.repeat_interleave(dim // cg.shape[1], dim=1).transpose(-1, -2)  # [b, d, L, N]
    h = torch.zeros(batch, dim, A.shape[1], dtype=ct, device=u.device)
    ys = []
    for t in range(length):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append((h * cc[:, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uu.new_zeros(batch, dim, 0)
    return _finish(y, uu, D, z)


# --------------------------------------------------------------------------------------------
# torch: the chunked scan
# --------------------------------------------------------------------------------------------
def _recurrence_(a: Tensor, h: Tensor, chunk: int) -> Tensor:
    """h_t = a_t h_{t-1} + h_t along dim 0, in place; returns ``h``.

    ``a`` holds decays in (0, 1] and is overwritten. Tensors are time-major, so every step is a
    contiguous slab, and the chunks are plain views ([n_chunks, T, ...]) of the same memory."""
    length = a.shape[0]
    n_chunks = length // chunk
    if n_chunks <= 1:
        for t in range(1, length):
            h[t].addcmul_(a[t], h[t - 1])
        return h
    body = n_chunks * chunk
    rest = a.shape[1:]
    ac = a[:body].view((n_chunks, chunk) + rest)
    hc = h[:body].view((n_chunks, chunk) + rest)
    for tau in range(1, chunk):
        # every chunk from a zero state, all chunks at once; then the decay since each chunk's
        # start (products of (0, 1]; a strided cumprod_ is several times slower), step by step
        # so that the slab a[:, tau] is still in cache for its second use
        hc[:, tau].addcmul_(ac[:, tau], hc[:, tau - 1])
        ac[:, tau].mul_(ac[:, tau - 1])
    # the state at the end of each chunk: the same recurrence one level up, over chunk ends
    ends = _recurrence_(ac[:, -1].clone(), hc[:, -1].clone(), chunk)
    hc[1:].addcmul_(ac[1:], ends[:-1].unsqueeze(1))
    for t in range(body, length):        # the tail shorter than a chunk
        h[t].addcmul_(a[t], h[t - 1])
    return h


#: above this many elements in one [L, b, N, d] working tensor (N > 1), channels are scanned in
#: slices of about _TILE_ELEMENTS: memory traffic, not arithmetic, bounds the scan at N = 16
_TILE_ABOVE = 1 << 22
_TILE_ELEMENTS = 3 << 19


def _channel_tile(per_channel: int, dim: int, groups: int) -> int:
    """Channels per slice: ``dim`` when the working set is small (or N = 1), otherwise the
    largest divisor of a group's channels that keeps a slice near ``_TILE_ELEMENTS``."""
    if per_channel * dim <= _TILE_ABOVE or per_channel <= 0 or dim <= 1:
        return dim
    per_group = dim // groups
    want = max(1, _TILE_ELEMENTS // per_channel)
    return max(d for d in range(1, per_group + 1) if per_group % d == 0 and d <= max(want, 1))


def _in_channel_slices(fn, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                       delta_softplus: bool, chunk: int) -> Optional[Tensor]:
    """``fn`` over cache-sized channel slices, concatenated; None when one slice is all. Channels
    are independent; a slice lies inside one group of B and C (VMamba: one per direction), and
    under autograd the gradients of the shared B/C sum over the slices by themselves."""
    batch, dim, length = u.shape
    n = A.shape[1]
    groups = max(t.shape[1] if t.dim() == 4 else 1 for t in (B, C))
    tile = _channel_tile(length * batch * n, dim, groups) if n > 1 else dim
    if tile >= dim:
        return None
    per_group = dim // groups
    pieces = []
    for start in range(0, dim, tile):
        sl, g = slice(start, start + tile), start // per_group

        def pick(t: Tensor) -> Tensor:        # B/C: constant per channel, or the slice's group
            return t[sl] if t.dim() == 2 else (t[:, g:g + 1] if t.dim() == 4 else t)
        pieces.append(fn(u[:, sl], delta[:, sl], A[sl], pick(B), pick(C),
                         None if D is None else D[sl], None if z is None else z[:, sl],
                         None if delta_bias is None else delta_bias[sl], delta_softplus, chunk))
    return torch.cat(pieces, dim=1)


def scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
               D: Optional[Tensor] = None, z: Optional[Tensor] = None,
               delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
               chunk: int = DEFAULT_CHUNK) -> Tensor:
    """The chunked scan (see the module docstring). No autograd (it works in place)."""
    if chunk < 2:
        raise ValueError(f"chunk must be >= 2, got {chunk}")
    batch, dim, length = u.shape
    n = A.shape[1]
    stepwise = u.device.type == "cpu" and n > 1 and batch * dim * n >= _STEPWISE_MIN_STATE
    per_sample = length * dim * n
    if not stepwise and batch > 1 and batch * per_sample > _MAX_WORK_ELEMENTS:
        step = max(1, _MAX_WORK_ELEMENTS // per_sample)
        pieces = []
        for s in range(0, batch, step):
            sl = slice(s, s + step)
            pieces.append(scan_torch(
                u[sl], delta[sl], A, B if B.dim() == 2 else B[sl], C if C.dim() == 2 else C[sl],
                D, None if z is None else z[sl], delta_bias, delta_softplus, chunk))
        return torch.cat(pieces)

    sliced = None if stepwise else _in_channel_slices(
        scan_torch, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk)
    if sliced is not None:
        return sliced

    ct = _compute_dtype(u)
    with torch.no_grad():
        # time-major [L, b, d]: each time step is one contiguous slab. Δ is always a fresh copy
        # (bias added on the way), so softplus can work in place
        dt = _time_major_copy(delta, ct, delta_bias)
        if delta_softplus:
            _softplus(dt, inplace=True)
        a = A.to(ct)
        Bt, Ct = _time_major(B, ct), _time_major(C, ct)                     # [L|1, b|1, G, 1, N]
        if stepwise:
            # few buffers (the scan is memory-bound, and its inputs often arrive cold from
            # cache): Δ·u overwrites the copy of u once D·u has been taken from it, and the
            # C contraction accumulates onto D·u
            du = _time_major_copy(u, ct)
            y = None if D is None else torch.mul(du, D.to(ct))
            du.mul_(dt)
            with _one_thread_below_grain(batch * dim * n):
                y = _scan_stepwise(dt, du, a, Bt, Ct, y)
        else:
            # free when the caller hands over permuted views of time-major tensors (VMamba)
            u_t = u.permute(2, 0, 1).to(ct).contiguous()
            y = _scan_chunked(dt, u_t, a, Bt, Ct, chunk)
            if D is not None:
                y.addcmul_(u_t, D.to(ct))
        if z is not None:
            y.mul_(F.silu(z.permute(2, 0, 1).to(ct)))
        return y.permute(1, 2, 0)                                           # [b, d, L] view


def _scan_chunked(dt: Tensor, u_t: Tensor, a: Tensor, Bt: Tensor, Ct: Tensor, chunk: int) -> Tensor:
    """The chunked scan without D and gate, [L, b, D], from time-major Δ (after softplus) and u
    [L, b, D], A [D, N] and B/C from ``_time_major``."""
    length, batch, dim = dt.shape
    n, groups = a.shape[1], Bt.shape[2]
    grouped = (length, batch, groups, dim // groups)
    if n == 1:
        decay = _decay_exp_(torch.mul(dt, _decay_rate(a)[:, 0]))            # [L, b, d]
        drive = torch.mul(dt, u_t)
        drive.view(grouped).mul_(Bt[..., 0])
        h = _recurrence_(decay, drive, chunk)
        h.view(grouped).mul_(Ct[..., 0])
        return h
    # states before channels ([L, b, N, d]): every broadcast multiply runs along the contiguous
    # channels rather than along the N states, which on CPU is several times faster at N = 16;
    # the C contraction accumulates state by state, no [L, b, N, d] temporary
    g5 = (length, batch, n, groups, dim // groups)
    decay = _decay_exp_(_states_first(torch.mul, dt.unsqueeze(2), _decay_rate(a).t().contiguous(),
                                      (length, batch, n, dim)))
    du = torch.mul(dt, u_t).view(length, batch, 1, groups, dim // groups)
    drive = _states_first(torch.mul, du, _bc_states_first(Bt), g5)
    h = _recurrence_(decay, drive.view(length, batch, n, dim), chunk).view(g5)
    cs = _bc_states_first(Ct)                                               # [L|1, b|1, N, G, 1]
    if groups == 1 and Ct.shape[0] == length and Ct.shape[1] == batch:
        # one group, time-varying C: y_t = C_t h_t is one batched [1, N] x [N, d] matmul
        y = torch.bmm(Ct.reshape(length * batch, 1, n), h.view(length * batch, n, dim))
    else:
        y = torch.mul(h[:, :, 0], cs[:, :, 0])
        for k in range(1, n):
            y.addcmul_(h[:, :, k], cs[:, :, k])
    return y.view(length, batch, dim)


#: on CPU, with d_state > 1, the ``torch`` backend steps through time one state at a time
#: (``_scan_stepwise``) once one step's state (batch x channels x d_state) holds this many values:
#: each step is then a multiply-add large enough for its dispatch cost not to matter, and the
#: chunked scan's extra passes over [L, N, D] tensors that do not fit in cache cost more than
#: its fewer steps save (measured 1.4-2x at the Vim-S and VMamba-v0 shapes). At d_state 1 the
#: chunked scan stays faster (its [L, D] tensors are small), and on GPUs every step is a launch.
_STEPWISE_MIN_STATE = 4096
#: values of one block's decays (and of its states) in ``_scan_stepwise``: cache-sized. The
#: smaller size where it still leaves a block ``_STEPWISE_MIN_SMALL_BLOCK`` steps (fewer steps per
#: block repeat its four block ops more often): Vim-S at batch 1, 10 steps of 12288 values rather
#: than 16, scanned 1.12-1.15x faster on an Intel host (2 MiB L2), the VMamba-v0 N=16 shape at
#: batch 2 1.09-1.13x (``benchmarks/scan_setting.py``); larger states (batch 8) and smaller
#: ones keep their blocks
_STEPWISE_BLOCK_ELEMENTS = 1 << 18
_STEPWISE_SMALL_BLOCK_ELEMENTS = 1 << 17
_STEPWISE_MIN_SMALL_BLOCK = 8
_STEPWISE_MAX_BLOCK = 16


def _stepwise_block(state_values: int, length: int) -> int:
    """Steps per block of ``_scan_stepwise`` for a step's state of ``state_values`` values."""
    steps = _STEPWISE_SMALL_BLOCK_ELEMENTS // state_values
    if steps < _STEPWISE_MIN_SMALL_BLOCK:
        steps = _STEPWISE_BLOCK_ELEMENTS // state_values
    return max(1, min(_STEPWISE_MAX_BLOCK, length, steps))


#: torch's grain for elementwise CPU ops (at::internal::GRAIN_SIZE): smaller ones run on one thread
_PARALLEL_GRAIN = 32768


@contextlib.contextmanager
def _one_thread_below_grain(state_values: int):
    """One intra-op thread while the step-by-step scan runs when its steps (``state_values``
    each) are below torch's parallel grain anyway: then only each block's few ops would use the
    other threads, and waking them for every block costs more than it gains (Vim-S inside the
    model: the block's decay product 204 us with two threads, 44 us with the pool kept spinning;
    the whole Vim-S forward 1.28x faster). The setting is the process's, restored on exit."""
    threads = torch.get_num_threads()
    if state_values >= _PARALLEL_GRAIN or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _scan_stepwise(dt: Tensor, du: Tensor, a: Tensor, Bt: Tensor, Ct: Tensor,
                   y: Optional[Tensor] = None) -> Tensor:
    """The scan without the gate, [L, b, D], from time-major Δ (after softplus) and Δ·u [L, b, D],
    A [D, N] and B/C from ``_time_major``; y, if given, holds D·u [L, b, D] and receives C h on
    top. The plain recurrence, one in-place multiply-add per step, in blocks of a few steps
    whose decays, states and C contraction are made, used and dropped while they are in cache.
    States are laid out [b, G, N, D/G] so that a block's y = C h is one batched [1, N] x
    [N, D/G] matmul per (step, group)."""
    length, batch, dim = dt.shape
    n, groups = a.shape[1], Bt.shape[2]
    per_group = dim // groups
    state = (batch, groups, n, per_group)
    block = _stepwise_block(batch * dim * n, length)
    rate = _decay_rate(a).view(groups, per_group, n).transpose(1, 2).contiguous()  # [G, N, D/G]
    dt_g = dt.view(length, batch, groups, 1, per_group)
    du_g = du.view(length, batch, groups, 1, per_group)
    b_col = Bt.transpose(3, 4)                                             # [L|1, b|1, G, N, 1]

    def steps(t: Tensor, start: int, stop: int) -> Tensor:  # B/C may be constant over time
        return t[start:stop] if t.shape[0] > 1 else t

    accumulate = y is not None
    if y is None:
        y = dt.new_empty(length, batch, dim)
    # every block reuses the same buffers (their per-step views are made once); one block of
    # states, the last one carried over to the next block
    decay, h = dt.new_empty((block,) + state), dt.new_empty((block,) + state)
    carry = dt.new_empty(state)
    decays, hs = decay.unbind(0), h.unbind(0)
    for start in range(0, length, block):
        stop = min(start + block, length)
        size = stop - start
        _decay_exp_(torch.mul(dt_g[start:stop], rate, out=decay[:size]))
        torch.mul(du_g[start:stop], steps(b_col, start, stop), out=h[:size])
        if start > 0:
            hs[0].addcmul_(decays[0], carry)
        for h_now, dec, h_before in zip(hs[1:size], decays[1:size], hs[:size - 1]):
            h_now.addcmul_(dec, h_before)
        if stop < length:
            carry.copy_(hs[size - 1])
        c_row = steps(Ct, start, stop).expand(size, batch, groups, 1, n)
        y_block = y[start:stop].view(size, batch, groups, 1, per_group)
        if accumulate:   # y += C h, as one batched matmul over (step, batch, group)
            y_block.view(-1, 1, per_group).baddbmm_(c_row.reshape(-1, 1, n),
                                                    h[:size].view(-1, n, per_group))
        else:
            torch.matmul(c_row, h[:size], out=y_block)
    return y


def _decay_rate(a: Tensor) -> Tensor:
    """A in the units of ``_decay_exp_``: the decays exp(Δ A) are ``_decay_exp_``(Δ · this).
    Where exp2 is the faster exponential this is A · log2(e), and the one extra rounding (of
    the [D, N] product) adds at most one float32 rounding of the exponent, i.e. < 3e-8
    absolute on a decay in (0, 1]."""
    return a if _intel_mkl_math(a.device) else a * _LOG2_E


def _decay_exp_(x: Tensor) -> Tensor:
    """x ← exp(x / ``_decay_rate``'s scale) in place: exp or exp2, whichever is faster here."""
    return x.exp_() if _intel_mkl_math(x.device) else x.exp2_()


def scan_math(device) -> dict:
    """How the ``torch`` scan computes its exponentials on ``device``: decays by "exp" or "exp2",
    the softplus by "torch" (torch's kernel) or "pieces" (``_softplus``'s own, piece by piece).
    Recorded with every timing, since it decides part of the scan's speed."""
    intel_mkl = _intel_mkl_math(torch.device(device))
    return {"decays": "exp" if intel_mkl else "exp2",
            "softplus": "torch" if intel_mkl else "pieces"}


def _intel_mkl_math(device: torch.device) -> bool:
    """Whether the scan's exponentials on ``device`` are the Intel-with-MKL pair (decays by
    MKL's fast exp, torch's softplus kernel) rather than exp2 and the piecewise softplus (the
    faster pair on AMD CPUs, where torch's softplus is 2.4x slower, its log1p at 9.5 ns an
    element; and on GPUs). Decided by the machine, never by a timing, so that a machine always
    computes the same decays."""
    return device.type == "cpu" and cpu_is_intel_with_mkl()


@functools.lru_cache(maxsize=None)
def cpu_is_intel_with_mkl() -> bool:
    """Whether torch runs here with MKL on an Intel CPU: the machine rule that picks the scan's
    exponentials, from side-by-side measurements on both kinds of machine
    (``benchmarks/cpu_math.py``). Built with MKL, torch's float exp is MKL's vector exp, which
    takes its fast path on Intel CPUs only, while exp2 is Sleef's on every CPU:
    - Intel Xeon (AVX-512): exp 1.5-1.6x faster than exp2 on 256K elements, and torch's
      softplus 1.6-1.8x faster than the pieces (1.3x on 9.6M); the scans 1.08-1.22x faster;
    - AMD EPYC: exp2 2.6-4.4x faster than exp (0.135 against 0.60 ns an element), and the
      pieces 2.4x faster than torch's softplus."""
    return torch.backends.mkl.is_available() and cpu_vendor() == "GenuineIntel"


def cpu_vendor() -> str:
    """The CPU's vendor string (GenuineIntel, AuthenticAMD, ...), or "" where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return "GenuineIntel" if "Intel" in platform.processor() else ""


#: elements per piece of the softplus on CPU: its three temporaries and the piece then fit in
#: L2, and are reused piece after piece, instead of three fresh tensors the size of Δ (at
#: MedMamba's first stage, batch 8: 9.6M elements, 1.6x faster in pieces, 2.5x under glibc's
#: defaults). On a GPU every piece would be six more kernel launches: one piece there.
_SOFTPLUS_PIECE = 1 << 17


def _softplus(x: Tensor, inplace: bool = False) -> Tensor:
    """softplus(x) = max(x, 0) + log1p(e^-|x|), to about one rounding of F.softplus (relative
    error <= 2e-7 in float32 from -87 to 100, F.softplus's 1.2e-7; below -87 the result is
    denormal, above 20 it rounds to x, torch's threshold), and 2.4x faster than F.softplus on
    AMD CPUs, where torch's log1p is slow (9.5 ns an element). log1p(z) is
    log(u) + (z - (u - 1)) / u with u = 1 + z rounded: z - (u - 1) is exactly the rounding
    error of 1 + z. The plain log(1 + e^x) loses that error: Mamba's small steps (softplus
    1e-3, x near -7) then carry a relative error of 1e-4, and the scan's output ten times
    float32's (measured).
    ``inplace`` overwrites ``x``; otherwise the result is a new tensor in ``x``'s layout.
    Where torch's own softplus is the faster one (``_intel_mkl_math``), that runs instead: it
    is as precise (log1p of e^x, 1.2e-7)."""
    if _intel_mkl_math(x.device):
        return torch.ops.aten.softplus.out(x, 1, 20, out=x) if inplace else F.softplus(x)
    out = x if inplace else x.clone()   # a clone is dense, in x's dimension order
    # elementwise: any dense tensor is processed in its memory order, without a layout change
    order = sorted(range(out.dim()), key=out.stride, reverse=True)
    in_memory_order = out.permute(order)
    dense = in_memory_order.is_contiguous()
    # (in place on a tensor with gaps, a slice say: on a dense copy, written back after)
    work = in_memory_order if dense else in_memory_order.contiguous()
    flat = work.view(-1)
    piece = min(flat.numel(), _SOFTPLUS_PIECE) if flat.device.type == "cpu" else flat.numel()
    if piece:
        scratch = flat.new_empty(3, piece)
        for start in range(0, flat.numel(), piece):
            part = flat[start:start + piece]
            _softplus_piece_(part, *scratch[:, :part.numel()])
    if not dense:
        in_memory_order.copy_(work)
    return out


def _softplus_piece_(x: Tensor, z: Tensor, u: Tensor, w: Tensor) -> Tensor:
    """``_softplus`` on ``x`` in place, with z, u, w (x's shape) as scratch."""
    torch.abs(x, out=z).neg_().exp_()                 # e^-|x|, in [0, 1]
    torch.add(z, 1, out=u)
    z.sub_(torch.sub(u, 1, out=w))                    # the rounding error of 1 + z
    torch.log(u, out=w).addcdiv_(z, u)
    return x.clamp_(min=0).add_(w)


def _time_major_copy(t: Tensor, dtype: torch.dtype, bias: Optional[Tensor] = None) -> Tensor:
    """[b, d, L] ``t`` (+ ``bias`` [d]) as a new time-major [L, b, d] tensor of ``dtype`` (one
    pass where ``t`` is a time-major view already); never a view of ``t``, so the caller may
    overwrite it."""
    batch, dim, length = t.shape
    view = t.permute(2, 0, 1)
    out = t.new_empty((length, batch, dim), dtype=dtype)
    if bias is None:
        return out.copy_(view)
    if view.is_contiguous():           # time-major already (VMamba, Vim's Δ): one pass
        return torch.add(view, bias.to(dtype), out=out)
    # a transpose: torch's transposing copy, then the add, is 2-3x faster than one strided add
    # from cold memory
    return out.copy_(view).add_(bias.to(dtype))


def _time_major(t: Tensor, dtype: torch.dtype) -> Tensor:
    """B or C as [L, b, G, 1, N] (time-varying) or [1, 1, G=D, 1, N] (constant [D, N])."""
    if t.dim() == 2:
        return t.to(dtype)[None, None, :, None, :]
    return _grouped(t).to(dtype).permute(3, 0, 1, 2).unsqueeze(3).contiguous()


# --------------------------------------------------------------------------------------------
# torch with gradients: the chunked scan forward and its adjoint (training)
# --------------------------------------------------------------------------------------------
def _as_time_major_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          delta_bias: Optional[Tensor], ct: torch.dtype):
    dt_raw = delta.permute(2, 0, 1).to(ct)                                  # [L, b, d]
    if delta_bias is not None:
        dt_raw = dt_raw + delta_bias.to(ct)
    return dt_raw, u.permute(2, 0, 1).to(ct), A.to(ct), _time_major(B, ct), _time_major(C, ct)


def _grad_of_bc(g: Tensor, like: Tensor) -> Tensor:
    """A gradient computed time-major as [L, b, G, N] back in the layout of B or C."""
    if like.dim() == 2:                      # constant [D, N]: one group per channel
        return g.sum((0, 1)).to(like.dtype)
    g = g.permute(1, 2, 3, 0)                # [b, G, N, L]
    return (g[:, 0] if like.dim() == 3 else g).to(like.dtype).contiguous()


class _ScanTorchFunction(torch.autograd.Function):
    """The ``torch`` backend with a backward: the forward is the chunked scan (keeping the states
    h_t), the backward runs the adjoint recurrence λ_t = ∂y_t/∂h_t + a_{t+1} λ_{t+1} with the same
    chunked kernel on the time-reversed sequence, then forms every gradient from λ and h in a few
    vectorised products. Memory: two [L, b, D, N] tensors per call."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk):
        ct = _compute_dtype(u)
        length, batch, dim, n = u.shape[2], u.shape[0], u.shape[1], A.shape[1]
        dt_raw, u_t, a, Bt, Ct = _as_time_major_inputs(u, delta, A, B, C, delta_bias, ct)
        dt = _softplus(dt_raw) if delta_softplus else dt_raw
        groups = Bt.shape[2]
        grouped = (length, batch, groups, dim // groups)
        decay = _decay_exp_(torch.mul(dt.unsqueeze(-1), _decay_rate(a)))    # [L, b, d, N]
        drive = (torch.mul(dt, u_t).view(grouped).unsqueeze(-1) * Bt).view(length, batch, dim, n)
        h = _recurrence_(decay, drive, chunk)                                 # the states h_t
        y = (h.view(grouped + (n,)) * Ct).sum(-1).view(length, batch, dim)
        if D is not None:
            y = y + u_t * D.to(ct)
        out = y if z is None else y * F.silu(z.permute(2, 0, 1).to(ct))
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h, y)
        ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
        return out.permute(1, 2, 0)

    @staticmethod
    def backward(ctx, grad_out):
        u, delta, A, B, C, D, z, delta_bias, h, y = ctx.saved_tensors
        ct = h.dtype
        length, batch, dim, n = h.shape
        dt_raw, u_t, a, Bt, Ct = _as_time_major_inputs(u, delta, A, B, C, delta_bias, ct)
        dt = _softplus(dt_raw) if ctx.delta_softplus else dt_raw
        groups = Bt.shape[2]
        grouped = (length, batch, groups, dim // groups)
        g = grad_out.permute(2, 0, 1).to(ct)                                  # [L, b, d]
        grad_z = None
        if z is not None:
            zt = z.permute(2, 0, 1).to(ct)
            sig = torch.sigmoid(zt)
            grad_z = (g * y * sig * (1 + zt * (1 - sig))).permute(1, 2, 0).to(z.dtype)
            g = g * zt * sig
        grad_D = None if D is None else (g * u_t).sum((0, 1)).to(D.dtype)
        grad_u = g * D.to(ct) if D is not None else torch.zeros_like(g)
        g5 = g.view(grouped).unsqueeze(-1)                                    # [L, b, G, d/G, 1]
        grad_C = _grad_of_bc((g5 * h.view(grouped + (n,))).sum(3), C)
        # adjoint: reversed in time, λ'_s = gh'_s + a'_s λ'_{s-1} with a'_s = a_{L-s}
        decay = _decay_exp_(torch.mul(dt.unsqueeze(-1), _decay_rate(a)))    # as in forward
        lam = (g5 * Ct).view(length, batch, dim, n).flip(0)
        a_rev = torch.empty_like(decay)
        a_rev[0] = 1.0
        a_rev[1:] = decay[1:].flip(0)
        lam = _recurrence_(a_rev, lam, ctx.chunk).flip(0)                    # λ_t, time order
        # decay_t = exp(dt_t a): d/d(dt_t a) = λ_t h_{t-1} decay_t
        grad_x = lam * decay
        grad_x[1:] *= h[:-1]
        grad_x[0] = 0.0
        lam_b = (lam.view(grouped + (n,)) * Bt).sum(-1).view(length, batch, dim)   # Σ_n λ B
        grad_dt = (grad_x * a).sum(-1) + lam_b * u_t
        grad_u = grad_u + lam_b * dt
        grad_A = (grad_x * dt.unsqueeze(-1)).sum((0, 1)).to(A.dtype)
        grad_B = _grad_of_bc((lam.view(grouped + (n,)) * (dt * u_t).view(grouped).unsqueeze(-1))
                             .sum(3), B)
        if ctx.delta_softplus:
            grad_dt = grad_dt * torch.sigmoid(dt_raw)
        grad_bias = None if delta_bias is None else grad_dt.sum((0, 1)).to(delta_bias.dtype)
        return (grad_u.permute(1, 2, 0).to(u.dtype), grad_dt.permute(1, 2, 0).to(delta.dtype),
                grad_A, grad_B, grad_C, grad_D, grad_z, grad_bias, None, None)


def _bc_states_first(t: Tensor) -> Tensor:
    """B or C from ``_time_major``'s [L|1, b|1, G, 1, N] to [L|1, b|1, N, G, 1] (a view)."""
    return t.permute(0, 1, 4, 2, 3)


def _states_first(op, x: Tensor, y: Tensor, shape: tuple) -> Tensor:
    """``op(x, y)`` written into a fresh contiguous tensor of ``shape`` (an op's own output
    would follow its inputs' strides, not this layout)."""
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    return op(x, y, out=out)


def scan_torch_autograd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                        D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                        delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                        chunk: int = DEFAULT_CHUNK) -> Tensor:
    """The ``torch`` backend, differentiable (a custom backward; see ``_ScanTorchFunction``)."""
    if chunk < 2:
        raise ValueError(f"chunk must be >= 2, got {chunk}")
    sliced = _in_channel_slices(scan_torch_autograd, u, delta, A, B, C, D, z, delta_bias,
                                delta_softplus, chunk)
    if sliced is not None:   # large N > 1 scans: cache-sized slices, forward and backward
        return sliced
    return _ScanTorchFunction.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk)


# --------------------------------------------------------------------------------------------
# mamba_ssm
# --------------------------------------------------------------------------------------------
def scan_mamba_ssm(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                   delta_bias: Optional[Tensor] = None, delta_softplus: bool = False) -> Tensor:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    out = selective_scan_fn(u.contiguous(), delta.contiguous(), A.float().contiguous(),
                            B.contiguous(), C.contiguous(),
                            None if D is None else D.float().contiguous(),
                            None if z is None else z.contiguous(),
                            None if delta_bias is None else delta_bias.float().contiguous(),
                            delta_softplus)
    return out.float()


def _scan_cpp(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
              D: Optional[Tensor] = None, z: Optional[Tensor] = None,
              delta_bias: Optional[Tensor] = None, delta_softplus: bool = False) -> Tensor:
    from . import scan_cpp

    if not scan_cpp.supports(u, B, C):   # constant [D, N] B/C
        scan = scan_torch_autograd if torch.is_grad_enabled() else scan_torch
        return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if scan_cpp.channel_last_inference(u, delta, B, C):
        return scan_cpp.scan_cpp_time_major(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return scan_cpp.scan_cpp(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                 delta_bias: Optional[Tensor] = None, delta_softplus: bool = False) -> Tensor:
    from . import scan_triton

    if not scan_triton.supports(u):      # float64 (the kernel computes in float32), or huge
        return scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return scan_triton.scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                   out=_output_like(u, "triton"))


_IMPLEMENTATIONS = {"torch": scan_torch, "cpp": _scan_cpp, "triton": _scan_triton,
                    "reference": scan_reference, "mamba_ssm": scan_mamba_ssm}
#: what runs when gradients are needed: reference is plain autograd through the loop, mamba_ssm's
#: function has its own backward; the Triton kernel has none, so training takes torch's backward
_DIFFERENTIABLE = {"torch": scan_torch_autograd, "cpp": _scan_cpp,
                   "triton": scan_torch_autograd, "reference": scan_reference,
                   "mamba_ssm": scan_mamba_ssm}


# --------------------------------------------------------------------------------------------
# the custom op and the public function
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("tokenred::selective_scan", mutates_args=())
def _selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
                       delta_softplus: bool, backend: str) -> Tensor:
    out = _IMPLEMENTATIONS[backend](u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    like = _output_like(u, backend)
    if out.stride() != like.stride():   # the layout the fake promises (torch.compile asserts it)
        out = like.copy_(out)           # (a fallback path: cpp on constant B/C runs torch's scan)
    return out


def is_time_major(t: Tensor) -> bool:
    """A [b, d, L] view of time-major [L, b, d] storage (VMamba's layout)."""
    return t.dim() == 3 and t.permute(2, 0, 1).is_contiguous()


def has_contiguous_channels(t: Tensor) -> bool:
    """A [b, d, L] view whose channels lie next to each other: time-major [L, b, d] storage, or
    batch-outer [b, L, d] storage (a linear layer's output seen as [b, d, L], as Vim's), or a
    slice of either; the ``cpp`` inference kernel reads those through their strides."""
    return t.dim() == 3 and (t.shape[1] == 1 or t.stride(1) == 1)


def channel_last_like(u: Tensor, dtype: torch.dtype) -> Tensor:
    """An empty [b, d, L] view in u's channel-last storage: time-major [L, b, d] when u is,
    batch-outer [b, L, d] otherwise."""
    batch, dim, length = u.shape
    if is_time_major(u):
        return u.new_empty((length, batch, dim), dtype=dtype).permute(1, 2, 0)
    return u.new_empty((batch, length, dim), dtype=dtype).transpose(1, 2)


def _output_like(u: Tensor, backend: str) -> Tensor:
    """An empty output in the layout ``backend`` returns: the chunked ``torch`` scan's is a
    [B, D, L] view of time-major [L, B, D] storage (no copy back), and so is ``triton``'s for
    time-major u; ``cpp``'s keeps u's channel-last storage where u's channels are contiguous
    (``channel_last_like``); every other one is contiguous."""
    dtype = _compute_dtype(u)
    # (the op is inference only, so no gradient is needed: cpp's choice is its inference kernel's)
    if backend == "cpp" and has_contiguous_channels(u):
        return channel_last_like(u, dtype)
    if backend == "torch" or (backend == "triton" and is_time_major(u)):
        batch, dim, length = u.shape
        return u.new_empty((length, batch, dim), dtype=dtype).permute(1, 2, 0)
    return u.new_empty(u.shape, dtype=dtype)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend):
    return _output_like(u, backend)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                   delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                   backend: Optional[str] = None) -> Tensor:
    """The selective scan with mamba_ssm's argument shapes.

    u, delta: [batch, D, L]; A: [D, N]; B, C: [batch, G, N, L] (G groups of D/G channels; VMamba
    uses G = 4 directions), [batch, N, L] or [D, N]; D, delta_bias: [D]; z: [batch, D, L].
    Returns float32 [batch, D, L] (float64 if ``u`` is float64). ``backend``: ``None``/``"auto"``,
    ``"torch"``, ``"cpp"``, ``"triton"``, ``"reference"`` or ``"mamba_ssm"`` (see the module
    docstring).
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    # (a jit trace, as fvcore's counter takes, must record the one op, not an unrolled loop)
    needs_grad = torch.is_grad_enabled() and not torch.jit.is_tracing() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    if needs_grad:  # each differentiable backend has its own backward
        return _DIFFERENTIABLE[name](u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return _selective_scan_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, name)


# --------------------------------------------------------------------------------------------
# FLOPs: VMamba's formula, for fvcore (via tokenred.flops) and torch.utils.flop_counter
# --------------------------------------------------------------------------------------------
def scan_macs(batch: int, length: int, dim: int, d_state: int, with_d: bool = True,
              with_z: bool = False) -> int:
    """VMamba's count for one selective scan (MAC convention): 9·B·L·D·N + B·D·L (the D skip)
    + B·D·L more with a z gate."""
    return 9 * batch * length * dim * d_state + (batch * dim * length if with_d else 0) \
        + (batch * dim * length if with_z else 0)


def _fvcore_handle(inputs: list, outputs: list) -> int:
    from fvcore.nn.jit_handles import get_shape

    batch, dim, length = get_shape(inputs[0])
    d_state = get_shape(inputs[2])[1]

    def given(v) -> bool:
        return not isinstance(v.type(), torch._C.NoneType)

    return scan_macs(batch, length, dim, d_state, with_d=given(inputs[5]), with_z=given(inputs[6]))


def _flop_counter_formula(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape,
                          delta_bias_shape, delta_softplus, backend, out_shape=None, **kwargs) -> int:
    # torch.utils.flop_counter counts FLOPs as 2 x MACs (a matmul of m·n·k counts 2·m·n·k)
    batch, dim, length = u_shape
    return 2 * scan_macs(batch, length, dim, A_shape[1], with_d=D_shape is not None,
                         with_z=z_shape is not None)


def _register_flop_rules() -> None:
    from ..flops import register_flop_handle

    register_flop_handle("tokenred::selective_scan", _fvcore_handle)
    try:
        from torch.utils.flop_counter import register_flop_formula
        register_flop_formula(torch.ops.tokenred.selective_scan)(_flop_counter_formula)
    except (ImportError, AttributeError):  # older torch: fvcore counting still works
        pass


_register_flop_rules()

__all__ = ["selective_scan", "scan_torch", "scan_torch_autograd", "scan_reference", "scan_mamba_ssm", "scan_macs",
           "BACKENDS", "ScanBackendError", "set_default_backend", "get_default_backend",
           "resolve_backend", "mamba_ssm_available", "DEFAULT_CHUNK"]
