"""argparse ``type=`` helpers: a bad number is a usage error (exit 2) at parse time, never a traceback later.

Shared by the ``compressor`` commands and the torch-free ``python -m benchmarks`` (it lives here, below
``compressor``, which re-exports it from ``compressor.app._cli_types``).

Each helper converts the flag's text and checks its range; the message names the range and the
value, and argparse prefixes the flag (``argument --batch-size: expected an integer >= 1, got -2``).
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any, Callable

__all__ = ["fraction", "fraction_below_one", "non_negative_float", "non_negative_int", "open_fraction",
           "parse_assignments", "positive_float", "positive_int", "positive_int_list", "seed"]


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _checked(convert: Callable[[str], float], valid: Callable[[float], bool], what: str,
             name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = convert(text)
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse


positive_int = _checked(_integer, lambda v: v >= 1, "an integer >= 1", "positive_int")
non_negative_int = _checked(_integer, lambda v: v >= 0, "an integer >= 0", "non_negative_int")
positive_float = _checked(_number, lambda v: v > 0, "a number > 0", "positive_float")
non_negative_float = _checked(_number, lambda v: v >= 0, "a number >= 0", "non_negative_float")
# a fraction to keep (target FLOPs/params): keeping nothing is no model
fraction = _checked(_number, lambda v: 0 < v <= 1, "a fraction in (0, 1]", "fraction")
# a fraction to remove (channel ratios; removing everything is no model), label smoothing
fraction_below_one = _checked(_number, lambda v: 0 <= v < 1, "a fraction in [0, 1)", "fraction_below_one")
open_fraction = _checked(_number, lambda v: 0 < v < 1, "a number in (0, 1)", "open_fraction")  # EMA decay
seed = _checked(_integer, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)", "seed")  # numpy's seed range


def positive_int_list(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``: comma-separated integers >= 1, at least one."""
    message = f"expected comma-separated integers >= 1 such as 1,8,32, got {text!r}"
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(message)
    return values


def parse_assignments(items: list[str], flag: str, form: str = "KEY=VALUE") -> dict[str, Any]:
    """``["width=8", "name=x"]`` -> ``{"width": 8, "name": "x"}``: values are JSON (true, 3, "text"),
    anything else is a string. ValueError naming ``flag`` and the expected ``form``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} must look like {form}, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out
