"""Fused CPU inference kernels shared by backbones, and the one rule for when they may serve a call.

A fused kernel replaces several PyTorch ops by one call the autograd engine, a jit trace, the
compiler, autocast and a dispatch mode (the FLOP counters) cannot see into, so it is taken only
for plain inference: no gradient needed, nothing tracing or watching the ops one by one, no
autocast. Everywhere else the generic ops run, so gradients, compiled graphs, mixed precision
and FLOP counts are those of the generic path.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd would record an op on ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def inference_kernel_allowed(x: Tensor, weights: tuple = ()) -> bool:
    """Whether an opaque inference kernel may replace the generic ops for input ``x`` and the
    parameters ``weights``: no gradient is needed, no jit trace, compiler or dispatch mode must
    see the individual ops, and no autocast is on for x's device (it would run the generic
    matmuls in lower precision; the kernels compute in x's dtype)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    # (the compiler first: under it every other check here must be answered without tracing)
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if needs_grad(x, *weights):
        return False
    if torch.is_autocast_enabled(x.device.type):
        return False
    return _get_current_dispatch_mode() is None


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear_gelu_applies(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether ``linear_gelu`` serves this call: a float32 CPU input, oneDNN present, and
    ``inference_kernel_allowed``."""
    # (inference_kernel_allowed before oneDNN's availability, which torch.compile cannot trace:
    # asked first, it broke every compiled graph at each MLP)
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and inference_kernel_allowed(x, (weight,) if bias is None else (weight, bias))
            and _onednn_linear_available())


def linear_gelu(x: Tensor, weight: Tensor, bias: Optional[Tensor], approximate: str = "none") -> Tensor:
    """``gelu(linear(x, weight, bias))`` as one oneDNN matmul with the bias and GELU applied to
    each output tile while it is in cache. PyTorch's CPU ``addmm`` first copies the bias into the
    whole output and GELU then reads and writes it again: on VMamba-T's stage-0 MLP at batch 8
    those two passes take longer than the matmul. Same values up to float32 rounding."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], approximate)


def causal_conv1d_silu_applies(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether ``causal_conv1d_silu`` serves this call: float32 CPU tensors and
    ``inference_kernel_allowed``."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and inference_kernel_allowed(x, tensors[1:]))


def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """silu of Mamba's causal depthwise conv1d: x [B, E, L], weight [E, 1, K], bias [E]; the
    same values as ``F.silu(F.conv1d(x, weight, bias, padding=K - 1, groups=E)[..., :L])`` up
    to float32 rounding, as K shifted multiply-adds along time on time-major [B, L, E] storage
    (returned as a [B, E, L] view of it). PyTorch's CPU depthwise conv1d runs a 768-channel,
    197-step Vim-S layer in 350 us, for 0.6M multiply-adds; and its output is channel-major,
    so x_proj and the scan then read it across strides or copy it."""
    batch, channels, length = x.shape
    taps = weight.shape[-1]
    x_t = x.transpose(1, 2)                                       # [B, L, E], any strides
    w = weight.reshape(channels, taps).t().contiguous()           # [K, E]: tap k, all channels
    out = x.new_empty(batch, length, channels)
    # conv1d is a cross-correlation: y_t = b + sum_k w_k x_{t + k - (K - 1)}, x_{<0} = 0
    if bias is None:
        torch.mul(x_t, w[taps - 1], out=out)
    else:
        torch.addcmul(bias, x_t, w[taps - 1], out=out)
    for k in range(taps - 1):
        shift = taps - 1 - k
        if shift < length:
            out[:, shift:].addcmul_(x_t[:, :length - shift], w[k])
    return torch.nn.functional.silu(out, inplace=True).transpose(1, 2)
