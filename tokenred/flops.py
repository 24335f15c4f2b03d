"""FLOP counting in the MAC convention (fvcore's and the papers' "GFLOPs": one multiply-add = 1).

Built on fvcore's jit-trace counter, with the gaps it has filled in:

* ``aten::scaled_dot_product_attention`` (timm's fused attention; fvcore counts it as 0):
  B·H·Nq·Nk·(D + Dv) MACs, the two matmuls. An additive mask (ToMe's log(size) bias) is an
  elementwise add and counts 0, like every elementwise op.
* Ops that are deliberately zero (documented convention, never "unsupported"): elementwise
  arithmetic and activations, softmax, reductions (sum/mean/amax/norm), comparisons and sorting
  (sort/argsort/topk/max), indexing and data movement (gather/scatter/scatter_reduce/index/cat),
  random-number and tensor creation. This is the convention behind the published numbers (DeiT-S
  4.6 G, official ToMe r=13 2.71 G): only matmuls, convolutions, attention and normalisation layers
  count. A token-reduction method's own similarity matmul is a matmul and is counted.
* Token reduction's own work follows the same convention. Data movement is 0: selecting kept
  tokens (slicing, gather, index_select), nearest-neighbour upsampling (fvcore would count one per
  output element; here it is a copy, like an unmerge gather) and unmerging — its time shows in
  the throughput columns, not here. Arithmetic counts: a similarity matmul (ToMe) is a matmul, and
  average pooling (QuarterMap ``mode="avg"``) counts one per input element, as fvcore counts
  adaptive average pooling, pairwise distances (``cdist``: K-Medoids, DPC-KNN) count P·R·C like
  the matmul that computes them. Everything after the reduction (scan, projections) is traced on the
  tokens that remain, so the total reflects the reduction.
* Further handles can be added with ``register_flop_handle(op_name, fn)`` (fvcore handle signature).

Ops seen in the trace that have neither a handle nor a zero rule are listed in ``uncounted``
instead of being warned about one by one.
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import torch
from torch import nn

#: op name -> fvcore handle(inputs, outputs) -> MACs
_EXTRA_HANDLES: dict[str, Callable[[list, list], Any]] = {}

_ZERO_OPS = """
add add_ sub sub_ rsub mul mul_ div div_ neg reciprocal pow sqrt rsqrt exp log log_ abs sign
gelu silu relu relu_ sigmoid tanh softplus hardtanh hardswish hardsigmoid elu leaky_relu
softmax log_softmax dropout dropout_ feature_dropout
sum mean amax amin max min prod linalg_vector_norm norm frobenius_norm var std cumsum
sort argsort topk argmax argmin eq ne lt le gt ge where masked_fill masked_fill_ clamp clamp_
clamp_min clamp_max fill_ zero_ lift_fresh
gather scatter scatter_ scatter_add scatter_add_ scatter_reduce scatter_reduce_ index_select
index index_put_ take_along_dim repeat repeat_interleave expand_as flip roll pad
ones_like zeros_like full_like empty_like rand rand_like randn randn_like randint randperm
uniform_ normal_ bernoulli_ eye linspace arange new_zeros new_ones new_full new_empty
unflatten movedim contiguous clone detach alias expand view reshape permute transpose
split split_with_sizes chunk constant_pad_nd unbind slice select narrow cat stack squeeze unsqueeze flatten t
to type_as copy_ float int long bool ScalarImplicit Int Float item numel size sym_size real imag
upsample_nearest1d upsample_nearest2d upsample_nearest3d cummax nonzero logical_not bitwise_not
__and__ __or__ logical_and logical_or
""".split()


def register_flop_handle(op_name: str, handle: Callable[[list, list], Any]) -> None:
    """Count ``op_name`` (e.g. ``"mylib::my_op"``) with an fvcore-style handle returning MACs."""
    _EXTRA_HANDLES[op_name] = handle


def _shape(value: Any) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def pooling_macs(inputs: list, outputs: list) -> int:
    """Average pooling: one per input element (each is added once), fvcore's rule for adaptive
    average pooling applied to the fixed-window op."""
    numel = 1
    for d in _shape(inputs[0]):
        numel *= d
    return numel


def cdist_macs(inputs: list, outputs: list) -> int:
    """Pairwise distances of [.., P, C] and [.., R, C]: P·R·C MACs per batch element (the
    matmul form torch uses; the squared norms are elementwise)."""
    a, b = _shape(inputs[0]), _shape(inputs[1])
    batch = 1
    for d in a[:-2]:
        batch *= d
    return batch * a[-2] * b[-2] * a[-1]


def sdpa_macs(inputs: list, outputs: list) -> int:
    q, k, v = (_shape(inputs[i]) for i in range(3))
    batch_heads = 1
    for d in q[:-2]:
        batch_heads *= d
    nq, d_qk, nk, d_v = q[-2], q[-1], k[-2], v[-1]
    return batch_heads * nq * nk * (d_qk + d_v)


@dataclass
class FlopCount:
    """``total`` in MACs for one forward at ``input_shape``; breakdowns in MACs."""

    total: int
    input_shape: tuple
    by_operator: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)
    uncounted: dict[str, int] = field(default_factory=dict)  # op name -> occurrences

    @property
    def gflops(self) -> float:
        """Giga multiply-adds per image (the papers' "GFLOPs")."""
        return self.total / self.input_shape[0] / 1e9

    def __repr__(self) -> str:
        extra = f", uncounted={self.uncounted}" if self.uncounted else ""
        return f"FlopCount({self.gflops:.4f} GMACs/image at {list(self.input_shape)}{extra})"


def resolve_input_shape(input_size: Union[int, Sequence[int]], batch_size: int = 1,
                        in_chans: int = 3) -> tuple[int, int, int, int]:
    """224 -> (B, 3, 224, 224); (H, W); (C, H, W); (B, C, H, W)."""
    def bad() -> ValueError:
        return ValueError(f"input_size {input_size!r}: give a positive int, (H, W), (C, H, W) or "
                          f"(B, C, H, W) of positive ints")

    if isinstance(input_size, bool):
        raise bad()
    if isinstance(input_size, int):
        if input_size < 1:
            raise bad()
        return (batch_size, in_chans, input_size, input_size)
    if isinstance(input_size, str) or not hasattr(input_size, "__iter__"):
        raise bad()
    size = tuple(input_size)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise bad()
    if len(size) == 2:
        return (batch_size, in_chans) + size
    if len(size) == 3:
        return (batch_size,) + size
    if len(size) == 4:
        return size
    raise ValueError(f"input_size {input_size!r}: give an int, (H, W), (C, H, W) or (B, C, H, W)")


def count_flops(model: nn.Module, input_size: Union[int, Sequence[int]] = 224) -> FlopCount:
    """Count MACs of one forward of ``model`` on a random input of ``input_size`` (batch 1 unless
    a 4-tuple is given). Whatever tokenred method is installed on ``model`` is counted with it."""
    with warnings.catch_warnings():
        # fvcore traces with torch.jit, which torch marks deprecated; the counts are unaffected
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _count_flops(model, input_size)


def _count_flops(model: nn.Module, input_size: Union[int, Sequence[int]]) -> FlopCount:
    from fvcore.nn import FlopCountAnalysis

    shape = resolve_input_shape(input_size, in_chans=_in_chans(model))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.randn(shape, device=device, dtype=dtype)

    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        analysis.set_op_handle(**{f"aten::{name}": None for name in _ZERO_OPS})
        analysis.set_op_handle(**{"aten::scaled_dot_product_attention": sdpa_macs,
                                  "aten::avg_pool2d": pooling_macs, "aten::cdist": cdist_macs})
        analysis.set_op_handle(**_EXTRA_HANDLES)
        # fvcore logs each skipped op at WARNING through its own logger; we report them instead
        logger = logging.getLogger("fvcore.nn.jit_analysis")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            with torch.no_grad():  # the trace (taken lazily here) needs no autograd bookkeeping
                total = int(analysis.total())
            by_operator = {k: int(v) for k, v in analysis.by_operator().items() if v}
            by_module = {k: int(v) for k, v in analysis.by_module().items() if v}
            uncounted = dict(Counter(analysis.unsupported_ops()))
        finally:
            logger.setLevel(level)
    finally:
        model.train(was_training)
    return FlopCount(total, shape, by_operator, by_module, uncounted)


def _in_chans(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
