"""The ``triton`` selective-scan backend: one Triton kernel for inference on CUDA.

Each program owns one sample and a block of channels. It walks the sequence in tiles of
``BLOCK_L`` steps. Per tile, and per state n, it forms the decays exp(Δ A) and drives Δ u B in
registers, and scans the tile with ``tl.associative_scan`` on the pairs (a, b) under
(a1, b1)∘(a2, b2) = (a1 a2, a2 b1 + b2) — products of decays in (0, 1], so nothing can overflow.
d_state is a compile-time constant, so the kernel is specialised for each (1 for VMamba v2, 16
for v0, MedMamba and Vim). The state entering the tile is folded into its first drive. Softplus
and bias of Δ, the D skip and the z gate are fused, and inputs are read through their strides:
VMamba's time-major views need no copy.

What it does not do (the dispatcher says so by routing elsewhere):

* gradients: training on CUDA runs the ``torch`` backend's custom backward;
* float64: the kernel computes in float32, so float64 inputs take ``torch``.

Checked without a GPU, two ways (tests/test_scan_triton.py):

* against a float64 loop and the ``torch`` backend, with Triton's CPU interpreter
  (``TRITON_INTERPRET=1``);
* compiled ahead of time for sm_90 (H100/H200) down to a cubin by Triton's own ptxas, with no
  register spills.

Whether it is correct and fast on a real GPU is for ``benchmarks/gpu_run.sh`` to show. ``auto``
chooses it on CUDA when mamba_ssm is absent and Triton is importable. If it fails to compile or
disagrees there, ``auto`` warns once and uses ``torch`` for the rest of the process.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
from torch import Tensor

from . import auto_check

try:
    import triton
    import triton.language as tl
except ImportError:           # no Triton: available() says so, and nothing below is defined
    triton = None

#: tile of one program: channels x steps, and its warps. Compiled for sm_90 (H100/H200) these
#: take 96 (d_state 1) and 141 (d_state 16) registers per thread with no spills; 32 x 64 tiles
#: spilled (ptxas -v; tests/test_scan_triton.py checks it without a GPU)
BLOCK_D, BLOCK_L, NUM_WARPS = 16, 32, 4


def source_digest() -> str:
    """A digest of this file, which holds the kernel: a changed kernel is another build."""
    import hashlib

    with open(__file__, "rb") as f:
        return "scan_triton_" + hashlib.sha256(f.read()).hexdigest()[:12]


def available() -> bool:
    return triton is not None


def interpreting() -> bool:
    """Triton's CPU interpreter is on (TRITON_INTERPRET=1): kernels run on CPU tensors."""
    return triton is not None and bool(triton.knobs.runtime.interpret)


@torch.compiler.disable   # (the check runs a thread and real tensors: never traced)
def works_on(device: torch.device) -> bool:
    """Whether ``auto`` may pick this kernel on ``device``: Triton is importable, and the kernel
    compiles there and matches the ``torch`` backend on a small scan (``auto_check``: once per
    device and process; a failure warns once and ``auto`` uses ``torch``)."""
    return triton is not None and auto_check.verified("Triton", device, lambda: _check(device))


def _check(device: torch.device):
    """True, or why not: the kernel against the ``torch`` backend on a small scan."""
    from .selective_scan import scan_torch   # (imported here: that module imports this one)

    args = auto_check.small_scan_inputs()
    expect = scan_torch(**args, delta_softplus=True)
    got = scan_triton(**{k: v.to(device) for k, v in args.items()}, delta_softplus=True).cpu()
    return auto_check.agreement(got, expect)


def supports(u: Tensor) -> bool:
    """What the kernel computes: float32 (float64 would lose precision), with 32-bit offsets."""
    return u.dtype != torch.float64 and u.numel() < 2 ** 31


if triton is not None:
    _LOG2_E = tl.constexpr(1.4426950408889634)   # exp(x) = exp2(x log2 e), as the torch backend

    @triton.jit
    def _linear_recurrence(a1, b1, a2, b2):
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _scan_kernel(u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr, bias_ptr, y_ptr,
                     s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_ad, s_an,
                     s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl,
                     s_zb, s_zd, s_zl, s_yb, s_yd, s_yl,
                     dim, length, per_group,
                     N: tl.constexpr, N_PAD: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SOFTPLUS: tl.constexpr):
        batch = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = d < dim
        group = d // per_group
        steps = tl.arange(0, BLOCK_L)
        states = tl.arange(0, N_PAD)
        carry = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)    # h entering the tile
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        if HAS_D:
            skip = tl.load(d_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        for start in range(0, length, BLOCK_L):
            t = start + steps
            ok = d_ok[:, None] & (t < length)[None, :]
            u = tl.load(u_ptr + batch * s_ub + d[:, None] * s_ud + t[None, :] * s_ul,
                        mask=ok, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + batch * s_tb + d[:, None] * s_td + t[None, :] * s_tl,
                         mask=ok, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias[:, None]
            if SOFTPLUS:
                # max(x, 0) + log1p(e^-|x|), log1p(z) = log(u) + (z - (u - 1)) / u, u = 1 + z
                # rounded: as the torch backend's _softplus (log(1 + e^x) would lose the
                # rounding of 1 + z, a relative error of 1e-4 at Mamba's small steps)
                z = tl.exp(-tl.abs(dt))
                one_z = 1.0 + z
                dt = tl.maximum(dt, 0.0) + tl.log(one_z) + (z - (one_z - 1.0)) / one_z
            du = dt * u
            y = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
            b_row = b_ptr + batch * s_bb + group[:, None] * s_bg + t[None, :] * s_bl
            c_row = c_ptr + batch * s_cb + group[:, None] * s_cg + t[None, :] * s_cl
            for n in range(N):
                a = tl.load(a_ptr + d * s_ad + n * s_an, mask=d_ok, other=0.0).to(tl.float32)
                decay = tl.exp2(dt * (a * _LOG2_E)[:, None])
                drive = du * tl.load(b_row + n * s_bn, mask=ok, other=0.0).to(tl.float32)
                # past the end: decay 1, drive 0, so the tile's last column is the last state
                decay = tl.where(ok, decay, 1.0)
                drive = tl.where(ok, drive, 0.0)
                entering = tl.sum(tl.where(states[None, :] == n, carry, 0.0), axis=1)
                drive = tl.where(steps[None, :] == 0, drive + decay * entering[:, None], drive)
                _, h = tl.associative_scan((decay, drive), 1, _linear_recurrence)
                y += h * tl.load(c_row + n * s_cn, mask=ok, other=0.0).to(tl.float32)
                leaving = tl.sum(tl.where(steps[None, :] == BLOCK_L - 1, h, 0.0), axis=1)
                carry = tl.where(states[None, :] == n, leaving[:, None], carry)
            if HAS_D:
                y += u * skip[:, None]
            if HAS_Z:
                z = tl.load(z_ptr + batch * s_zb + d[:, None] * s_zd + t[None, :] * s_zl,
                            mask=ok, other=0.0).to(tl.float32)
                y = y * z * tl.sigmoid(z)
            tl.store(y_ptr + batch * s_yb + d[:, None] * s_yd + t[None, :] * s_yl, y, mask=ok)


def _grouped(t: Tensor, dim: int, batch: int, length: int) -> tuple[Tensor, int]:
    """B or C as a [batch, G, N, L] view, and the channels per group. A constant [D, N] is a
    zero-stride view with one group per channel."""
    if t.dim() == 2:
        return t[None, :, :, None].expand(batch, dim, t.shape[1], length), 1
    g = t.unsqueeze(1) if t.dim() == 3 else t
    return g, dim // g.shape[1]


def scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Optional[Tensor] = None, z: Optional[Tensor] = None,
                delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                out: Optional[Tensor] = None, block_d: int = BLOCK_D, block_l: int = BLOCK_L,
                num_warps: int = NUM_WARPS) -> Tensor:
    """y [batch, D, L] float32 (into ``out`` when given: any strides). Shapes as
    ``selective_scan``'s; the caller checks them."""
    if triton is None:
        raise RuntimeError("scan backend 'triton' needs the triton package (pip install triton)")
    batch, dim, length = u.shape
    n = A.shape[1]
    y = torch.empty(u.shape, dtype=torch.float32, device=u.device) if out is None else out
    if y.numel() == 0:
        return y
    bg, per_group = _grouped(B, dim, batch, length)
    cg, per_group_c = _grouped(C, dim, batch, length)
    if per_group != per_group_c:   # B and C in different group counts: one per channel for both
        bg = bg.repeat_interleave(per_group, dim=1) if per_group > 1 else bg
        cg = cg.repeat_interleave(per_group_c, dim=1) if per_group_c > 1 else cg
        per_group = 1
    dummy = u                    # a pointer for the absent D / z / bias (never read)
    zt = z if z is not None else dummy
    block_l = min(block_l, triton.next_power_of_2(max(length, 1)))
    block_d = min(block_d, triton.next_power_of_2(dim))
    grid = (batch, math.ceil(dim / block_d))
    # launch on the tensors' GPU, not on the thread's current one (cuda:1 models, the check's thread)
    with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
        _scan_kernel[grid](
            u, delta, A, bg, cg, D if D is not None else dummy, zt,
            delta_bias if delta_bias is not None else dummy, y,
            *u.stride(), *delta.stride(), *A.stride(), *bg.stride(), *cg.stride(),
            *zt.stride(), *y.stride(),
            dim, length, per_group,
            N=n, N_PAD=triton.next_power_of_2(n), BLOCK_D=block_d, BLOCK_L=block_l,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), num_warps=num_warps)
    return y
