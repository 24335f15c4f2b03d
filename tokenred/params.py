"""Typed, validated reducer parameters.

A reducer declares its parameters as a ``{name: Param}`` table. Values arrive either from Python
(``tokenred.apply(model, "tome", r=13)``) or as strings from a method spec on the command line
(``tome:r=13,prop_attn=false``); both go through the same ``Param.parse`` so the two paths can
never disagree about what is allowed.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


class ParameterError(ValueError):
    """A reducer parameter was missing, unknown or out of its allowed range."""


def _literal(value: Any) -> Any:
    """Turn a command-line string into a Python literal where it is one ('13' -> 13)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@dataclass(frozen=True)
class Param:
    """One parameter: a default, a one-line doc, a human description of the allowed values and a
    parser that returns the normalised value or raises ``ValueError``."""

    default: Any
    doc: str
    allowed: str
    parse_fn: Callable[[Any], Any] = field(default=lambda v: v, repr=False)

    def parse(self, method: str, name: str, value: Any) -> Any:
        try:
            return self.parse_fn(_literal(value))
        except (ValueError, TypeError) as exc:
            raise ParameterError(
                f"{method}: parameter {name!r} got {value!r}; allowed: {self.allowed}"
                + (f" ({exc})" if str(exc) else "")
            ) from None


def Int(default: int | None, doc: str, *, min: int | None = None, max: int | None = None,
        optional: bool = False) -> Param:
    lo = "-inf" if min is None else str(min)
    hi = "inf" if max is None else str(max)
    allowed = f"an integer in [{lo}, {hi}]" + (" or None" if optional else "")

    def parse(v: Any) -> int | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ValueError("not an integer")
        if (min is not None and v < min) or (max is not None and v > max):
            raise ValueError("out of range")
        return int(v)

    return Param(default, doc, allowed, parse)


def Float(default: float | None, doc: str, *, min: float | None = None, max: float | None = None,
          min_open: bool = False, max_open: bool = False, optional: bool = False) -> Param:
    lb = "(" if min_open else "["
    rb = ")" if max_open else "]"
    lo = "-inf" if min is None else f"{min:g}"
    hi = "inf" if max is None else f"{max:g}"
    allowed = f"a number in {lb}{lo}, {hi}{rb}" + (" or None" if optional else "")

    def parse(v: Any) -> float | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("not a number")
        v = float(v)
        if math.isnan(v):
            raise ValueError("NaN")
        if min is not None and (v < min or (min_open and v == min)):
            raise ValueError("out of range")
        if max is not None and (v > max or (max_open and v == max)):
            raise ValueError("out of range")
        return v

    return Param(default, doc, allowed, parse)


def Bool(default: bool, doc: str) -> Param:
    def parse(v: Any) -> bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return bool(v)
        raise ValueError("not a boolean")

    return Param(default, doc, "true or false", parse)


def Choice(default: str, doc: str, choices: Sequence[str]) -> Param:
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError("not one of the choices")
        return v

    return Param(default, doc, "one of " + ", ".join(repr(c) for c in choices), parse)


def validate(method: str, table: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Parse ``given`` against ``table``; unknown names are an error that lists the known ones."""
    unknown = sorted(set(given) - set(table))
    if unknown:
        known = ", ".join(sorted(table)) or "(none)"
        raise ParameterError(f"{method}: unknown parameter(s) {', '.join(unknown)}; "
                             f"{method} takes: {known}")
    values = {name: p.default for name, p in table.items()}
    for name, value in given.items():
        values[name] = table[name].parse(method, name, value)
    return values


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets/parentheses, so ``r=(13,-0.5),prop_attn=true`` splits in two."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ParameterError(f"unbalanced brackets in {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ParameterError(f"unbalanced brackets in {text!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def split_method_list(text: str) -> list[str]:
    """Split a comma-separated list of method specs whose parameters are comma-separated too:
    ``"none,tome:r=13,prop_attn=false,random_drop"`` -> 3 specs. A piece that is ``key=value``
    (an ``=`` before any ``:``) continues the previous spec."""
    specs: list[str] = []
    for piece in split_top_level(text):
        eq, colon = piece.find("="), piece.find(":")
        continues = eq != -1 and (colon == -1 or eq < colon)
        if continues:
            if not specs:
                raise ParameterError(f"method list {text!r} starts with a parameter {piece!r}")
            specs[-1] += ("," if ":" in specs[-1] else ":") + piece
        else:
            specs.append(piece)
    return specs


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"tome:r=13,prop_attn=false"`` -> ``("tome", {"r": 13, "prop_attn": False})``.

    Values stay strings only where they are not Python literals; each reducer's ``Param`` parses
    them further, so a bad value is reported by the parameter that owns it.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError(f"empty method spec {spec!r}; write NAME or NAME:key=value,key=value")
    name, _, rest = spec.strip().partition(":")
    params: dict[str, Any] = {}
    for item in split_top_level(rest):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ParameterError(f"method spec {spec!r}: {item!r} is not key=value")
        key = key.strip()
        if key in params:
            raise ParameterError(f"method spec {spec!r}: {key!r} given twice")
        params[key] = _literal(value)
    return name.strip(), params


def format_method_spec(name: str, params: Mapping[str, Any]) -> str:
    """Inverse of ``parse_method_spec`` for display: ``tome:r=13``."""
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={_format_value(v)}" for k, v in params.items())


def _format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        inner = ",".join(_format_value(x) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner})"
    return str(v)
