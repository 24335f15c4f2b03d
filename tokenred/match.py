"""Matched budgets: find, for every method with a rate parameter, the value that meets a target
(GFLOPs, measured speedup, or a shared keep share), so methods are compared at one operating
point instead of at each one's default.

* ``gflops=G`` — exact search on the FLOP count (deterministic and cheap): the value that keeps
  the most tokens while the count stays at or below G. Bisection over the rate (integers: exact;
  shares: to ``SHARE_TOLERANCE``), so the achieved count is the largest reachable one ≤ G.
* ``speedup=S`` — measured: bisection over the rate on short interleaved timings against
  ``none``, stopping once the measured speedup is within ``SPEED_TOLERANCE`` (relative) of S;
  the comparison then times the solved point again in its own interleaved run, so the speedup in
  the table is an independent measurement, not the one the search stopped on.
* ``keep=K`` — no search: methods whose rate is a share of tokens kept per reduction take K
  directly (EViT/Top-K/random drop/K-Medoids/DPC-KNN ``keep``, PiToMe ``ratio``); the others are
  not matched.

A method without a rate parameter (``none``, QuarterMap) or one that cannot reach the target (even
its most aggressive rate stays above it) is reported as not matched, with the reason.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn

from .apply import apply
from .flops import count_flops
from .params import ParameterError

TARGET_KINDS = ("gflops", "speedup", "keep")
SHARE_TOLERANCE = 1e-3
SPEED_TOLERANCE = 0.03
SPEED_STEPS = 7


@dataclass(frozen=True)
class Rate:
    """A method's rate parameter: ``name`` in [low, high] (``integer`` or a share); ``fewer``:
    which end keeps fewer tokens ("low" for keep shares, "high" for ToMe's r)."""

    name: str
    low: float
    high: float
    integer: bool = False
    fewer: str = "low"
    share: bool = False          # a share of tokens kept per reduction (matches keep=K)


class MatchError(ValueError):
    pass


def parse_target(text: str) -> tuple[str, float]:
    kind, eq, value = str(text).partition("=")
    kind = kind.strip()
    if not eq or kind not in TARGET_KINDS:
        raise MatchError(f"--match {text!r}: write KIND=VALUE with KIND one of {TARGET_KINDS} "
                         f"(e.g. gflops=3.0, speedup=1.5, keep=0.7)")
    try:
        number = float(value)
    except ValueError:
        raise MatchError(f"--match {text!r}: {value!r} is not a number") from None
    if number <= 0 or (kind == "keep" and number > 1):
        raise MatchError(f"--match {text!r}: {kind} must be > 0" + (" and <= 1" if kind == "keep" else ""))
    return kind, number


@dataclass
class Solved:
    params: Optional[dict]       # the method's parameters at the matched point (None: not matched)
    achieved: Optional[float]    # GFLOPs or speedup the search reached
    reason: str = ""


def _at(rate: Rate, t: float) -> Any:
    """The rate value a fraction t in [0, 1] of the way from 'fewest tokens' to 'most tokens'."""
    lo, hi = (rate.low, rate.high) if rate.fewer == "low" else (rate.high, rate.low)
    value = lo + t * (hi - lo)
    return int(round(value)) if rate.integer else value


def _bisect(measure: Callable[[Any], float], rate: Rate, target: float, larger_is_more: bool,
            steps: int, good_enough: Callable[[float], bool]) -> Solved:
    """Most tokens with ``measure`` on the budget side of ``target``. ``larger_is_more``: the
    measure grows with tokens (GFLOPs) or falls (speedup)."""
    def within(m: float) -> bool:
        return m <= target if larger_is_more else m >= target

    lo_t, hi_t = 0.0, 1.0
    fewest = measure(_at(rate, 0.0))
    if not within(fewest):
        return Solved(None, fewest, f"cannot reach {target:g}: its most aggressive {rate.name}="
                                    f"{_at(rate, 0.0)} gives {fewest:.4g}")
    best_value, best = _at(rate, 0.0), fewest
    most = measure(_at(rate, 1.0))
    if within(most):
        return Solved({rate.name: _at(rate, 1.0)}, most)
    for _ in range(steps):
        mid = (lo_t + hi_t) / 2
        value = _at(rate, mid)
        if rate.integer and value in (_at(rate, lo_t), _at(rate, hi_t)):
            break
        m = measure(value)
        if within(m):
            lo_t, best_value, best = mid, value, m
            if good_enough(m):
                break
        else:
            hi_t = mid
    if not rate.integer:   # a readable value, rounded towards fewer tokens so it stays in budget
        rounded = (math.floor if rate.fewer == "low" else math.ceil)(best_value * 1e4) / 1e4
        if rounded != best_value:
            best_value, best = rounded, measure(rounded)
    return Solved({rate.name: best_value}, best)


def solve(base: nn.Module, name: str, params: dict, rate: Optional[Rate], target: tuple[str, float],
          input_size: int, time_pair: Optional[Callable[[nn.Module], float]] = None) -> Solved:
    """The parameters of method ``name`` (other ``params`` kept) that meet ``target`` on ``base``.
    ``time_pair(model)`` returns the measured speedup of ``model`` over ``base`` (speed targets)."""
    kind, value = target
    if rate is None:
        return Solved(None, None, f"{name} has no rate parameter to match")
    if kind == "keep":
        if not rate.share:
            return Solved(None, None, f"{name}'s rate ({rate.name}) is not a share of tokens kept")
        return Solved({**params, rate.name: value}, None)
    where = params.get("where")
    others = {k: v for k, v in params.items() if k not in ("where", rate.name)}

    def trial(v: Any) -> nn.Module:
        model = copy.deepcopy(base)
        apply(model, name, where=where, **others, **{rate.name: v})
        return model

    if kind == "gflops":
        def measure(v: Any) -> float:
            return count_flops(trial(v), input_size).gflops

        steps = 40 if rate.integer else 14
        solved = _bisect(measure, rate, value, True, steps, lambda m: False)
    else:
        if time_pair is None:
            raise MatchError("a speedup target needs timing")

        def measure(v: Any) -> float:
            return time_pair(trial(v))

        solved = _bisect(measure, rate, value, False, SPEED_STEPS,
                         lambda m: abs(m - value) <= SPEED_TOLERANCE * value)
    if solved.params is not None:
        solved.params = {**params, **solved.params}
    return solved


def rate_of(method_cls: type) -> Optional[Rate]:
    rate = getattr(method_cls, "rate", None)
    if rate is not None and rate.name not in method_cls.params:
        raise ParameterError(f"{method_cls.__name__}.rate names {rate.name!r}, not a parameter")
    return rate
