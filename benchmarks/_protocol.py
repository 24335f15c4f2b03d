"""The timing flags the model benchmarks share, with per-device defaults, so every script reads
and resolves them the same way (imported by the scripts beside it: ``python benchmarks/x.py``)."""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

import tokenred
from tokenred.timing import environment, keep_freed_memory


@dataclass(frozen=True)
class TimingDefaults:
    """What ``--batch-size``, ``--warmup`` and ``--iters`` mean when not given, on CPU and CUDA
    (CUDA: VMamba's 50 warm-up + 30 timed unless a script says otherwise)."""

    cpu_batch: int
    cuda_batch: int
    cpu_warmup: int
    cpu_iters: int
    rounds: int
    cuda_warmup: int = 50
    cuda_iters: int = 30

    def parser(self, description: str) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(description=description)
        p.add_argument("--device", default="cpu")
        p.add_argument("--batch-size", type=int, default=None,
                       help=f"CPU {self.cpu_batch}, CUDA {self.cuda_batch}")
        p.add_argument("--dtype", default="float32")
        p.add_argument("--amp", action="store_true")
        p.add_argument("--warmup", type=int, default=None,
                       help=f"CPU {self.cpu_warmup}, CUDA {self.cuda_warmup}")
        p.add_argument("--iters", type=int, default=None,
                       help=f"CPU {self.cpu_iters}, CUDA {self.cuda_iters}")
        p.add_argument("--rounds", type=int, default=self.rounds)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--json", help="also write the results here")
        return p

    def resolve(self, args: argparse.Namespace) -> tuple[bool, int, int, int]:
        """(on CUDA?, batch size, warm-up forwards, timed forwards)."""
        cuda = args.device.startswith("cuda")
        batch = args.batch_size or (self.cuda_batch if cuda else self.cpu_batch)
        warmup = args.warmup if args.warmup is not None else (
            self.cuda_warmup if cuda else self.cpu_warmup)
        iters = args.iters or (self.cuda_iters if cuda else self.cpu_iters)
        return cuda, batch, warmup, iters


def gflops_or_nan(model, input_size: int = 224) -> float:
    """GMACs per image, or NaN where fvcore is missing (a bare GPU image): timing still runs."""
    try:
        return tokenred.count_flops(model, input_size).gflops
    except ImportError:
        return float("nan")


def timing_environment(device: torch.device, threads: Optional[int]) -> dict:
    """For the scripts that time with their own loop instead of tokenred's timing: the same
    allocator setting (``keep_freed_memory``) and ``--threads``, then the fp32 environment."""
    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    return environment(device, torch.float32, False)


@contextlib.contextmanager
def attribute_replaced(owner: Any, name: str, value: Any):
    """``owner.name`` set to ``value`` while the block runs (a module's rule, to time a model or
    a kernel with and without what it decides, side by side in one process)."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


class WithAttribute(nn.Module):
    """``model`` whose every forward runs with ``owner.name`` replaced by ``value``."""

    def __init__(self, model: nn.Module, owner: Any, name: str, value: Any):
        super().__init__()
        self.model, self.owner, self.name, self.value = model, owner, name, value

    def forward(self, x):
        with attribute_replaced(self.owner, self.name, self.value):
            return self.model(x)
