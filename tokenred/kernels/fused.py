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

    if needs_grad(x, *weights):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch.is_autocast_enabled(x.device.type):
        return False
    return _get_current_dispatch_mode() is None


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear_gelu_applies(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether ``linear_gelu`` serves this call: a float32 CPU input, oneDNN present, and
    ``inference_kernel_allowed``."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and _onednn_linear_available()
            and inference_kernel_allowed(x, (weight,) if bias is None else (weight, bias)))


def linear_gelu(x: Tensor, weight: Tensor, bias: Optional[Tensor], approximate: str = "none") -> Tensor:
    """``gelu(linear(x, weight, bias))`` as one oneDNN matmul with the bias and GELU applied to
    each output tile while it is in cache. PyTorch's CPU ``addmm`` first copies the bias into the
    whole output and GELU then reads and writes it again: on VMamba-T's stage-0 MLP at batch 8
    those two passes take longer than the matmul. Same values up to float32 rounding."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], approximate)
