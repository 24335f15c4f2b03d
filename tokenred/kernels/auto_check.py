"""Whether the ``auto`` scan backend may pick a compiled kernel (``cpp`` on CPU, ``triton`` on
CUDA): the kernel must build and agree with the ``torch`` backend on a small gated d_state-16
scan. Decided once per kernel and device in a process; a failure warns once, naming the error,
and ``auto`` then uses ``torch`` there.

The check runs in a thread of its own: dispatch modes (the FLOP counters), jit traces and
autocast are per thread, so none of the caller's sees the check's tensors.
"""
from __future__ import annotations

import threading
import warnings
from typing import Callable, Union

import torch
from torch import Tensor

_verdicts: dict = {}


def small_scan_inputs() -> dict:
    """The check's scan: 2 samples, 8 channels in 2 groups, d_state 16, 37 steps, with D, gate
    and Δ bias (``delta_softplus=True`` goes with them)."""
    g = torch.Generator().manual_seed(0)
    batch, dim, n, length = 2, 8, 16, 37
    return dict(u=torch.randn(batch, dim, length, generator=g),
                delta=torch.randn(batch, dim, length, generator=g),
                A=-torch.rand(dim, n, generator=g) - 0.5,
                B=torch.randn(batch, 2, n, length, generator=g),
                C=torch.randn(batch, 2, n, length, generator=g),
                D=torch.randn(dim, generator=g), z=torch.randn(batch, dim, length, generator=g),
                delta_bias=torch.randn(dim, generator=g))


def agreement(got: Tensor, expect: Tensor) -> Union[bool, str]:
    """True when ``got`` matches ``expect`` to float32 rounding (relative error < 1e-4), else
    by how much it differs."""
    err = ((got - expect).abs().max() / expect.abs().max()).item()
    return True if err < 1e-4 else f"it differs from the torch backend by {err:.1e}"


@torch.compiler.disable   # a one-time check with real tensors: never part of a compiled graph
def _run(check: Callable[[], Union[bool, str]]) -> Union[bool, str]:
    try:
        with torch.no_grad():
            return check()
    except Exception as exc:   # a build, compile or launch failure: any kind, reported below
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


def verified(kernel: str, device: torch.device, check: Callable[[], Union[bool, str]]) -> bool:
    """Whether ``check`` (True, or why not) passed for ``kernel`` on ``device``; run once."""
    key = (kernel, str(device))
    if key not in _verdicts:
        verdict: dict = {}
        worker = threading.Thread(target=lambda: verdict.update(result=_run(check)))
        worker.start()
        worker.join()
        _verdicts[key] = verdict.get("result", "the check did not finish")
        if _verdicts[key] is not True:
            warnings.warn(f"tokenred: the {kernel} selective scan does not work on {device} "
                          f"({_verdicts[key]}); the 'auto' scan backend uses 'torch' there",
                          RuntimeWarning, stacklevel=4)
    return _verdicts[key] is True
