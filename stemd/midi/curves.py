"""Knob curves: a 7-bit controller value (0..127) -> a parameter value between ``lo`` and ``hi``.

``linear`` spreads the travel evenly; ``exp`` is geometric (each step multiplies: right for
temperature and top-k, where 0.5 -> 1.0 matters as much as 1.0 -> 2.0; needs lo and hi above 0);
``log`` moves fast at the start and fine at the top. ``steps`` picks from a list (bars: 1 2 4 8 16).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

CURVES = ("linear", "exp", "log")

Number = Union[int, float]


def shape(curve: str, t: float) -> float:
    """0..1 -> 0..1 along ``curve`` (exp handled in :func:`knob_value`, it depends on the range)."""
    if curve == "log":
        return math.log1p(9.0 * t) / math.log(10.0)
    return t


def knob_value(value: int, lo: float, hi: float, curve: str = "linear", steps: Sequence[Number] = (),
               integer: bool = False) -> Number:
    """Where a controller value ``0..127`` lands; ``integer`` rounds (top_k, bars)."""
    t = min(max(value, 0), 127) / 127.0
    if steps:
        return steps[min(int(t * len(steps)), len(steps) - 1)]
    if curve == "exp":
        out = lo * (hi / lo) ** t
    else:
        out = lo + (hi - lo) * shape(curve, t)
    if integer:
        return int(round(out))
    return round(out, 6)
