"""tokenred: compare token-reduction methods on vision backbones with one FLOP, timing and
accuracy protocol."""
__version__ = "0.1.0"

from .reducer import Reducer
from .registry import (get_method, list_backbones, list_methods, register_backbone,
                       register_method)
from .sites import GridContext, ReducedGrid, SequenceContext, SequenceTokens, Site
from .apply import Handle, apply
from .backbone import create_backbone
from .checkpoint import CheckpointError, load_checkpoint
from .flops import FlopCount, count_flops, register_flop_handle
from .params import ParameterError
from .timing import BenchmarkResult, benchmark
from .compare import compare
from .search import search

# built-in backbones and methods register themselves on import
from . import backbones as _backbones  # noqa: E402,F401
from . import methods as _methods  # noqa: E402,F401
from .reference import register_reference_models as _register_reference_models  # noqa: E402

_register_reference_models()

__all__ = [
    "Reducer", "register_method", "register_backbone", "list_methods", "list_backbones",
    "get_method", "Site", "SequenceTokens", "SequenceContext", "GridContext", "ReducedGrid",
    "Handle", "apply",
    "create_backbone", "load_checkpoint", "CheckpointError", "count_flops", "FlopCount",
    "register_flop_handle", "ParameterError", "benchmark", "BenchmarkResult", "compare",
    "search",
]
