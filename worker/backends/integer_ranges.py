"""GBNF for the integers of a range, digit position by digit position.

llama-cpp-python's JSON-Schema-to-GBNF converter lets an `integer` be any integer; a schema's
`minimum`/`maximum` (exclusive too) are enforced here instead (worker/backends/grammars.py uses
it). Integers in JSON have no leading zeros, so the integers of [a, b] with the same number of
digits are a union of digit-class sequences, found as one compares a and b from the left:

    [123, 456]  ->  "1" "2" [3-9] | "1" [3-9] [0-9] | [2-3] [0-9] [0-9] | "4" [0-4] [0-9] | "4" "5" [0-6]

and a range spanning several lengths is the union of one such range per length. Negative
integers are `"-"` before the range of their magnitudes. An unbounded side stops at
`MAX_DIGITS` digits, as the converter's own `integer` does (16 digits), or at the bound's.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DIGITS = 16
# Bounds beyond this many digits are left to the check after generation: the grammar would be
# large for nothing (no model writes such an argument on purpose).
MAX_BOUND_DIGITS = 30

DigitClass = tuple[int, int]  # an inclusive range of digits


def integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """The integer bounds of an integer schema's `minimum`, `maximum`, `exclusiveMinimum` and
    `exclusiveMaximum` (draft 6+ numbers; a draft-4 boolean is left to the check), None where
    there is none or it is out of `MAX_BOUND_DIGITS`."""
    lows, highs = [], []
    for key, is_low, exclusive in (("minimum", True, False), ("exclusiveMinimum", True, True),
                                   ("maximum", False, False), ("exclusiveMaximum", False, True)):
        value = schema.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        if abs(value) >= 10**MAX_BOUND_DIGITS:
            continue
        if is_low:
            lows.append(math.floor(value) + 1 if exclusive else math.ceil(value))
        else:
            highs.append(math.ceil(value) - 1 if exclusive else math.floor(value))
    return (max(lows) if lows else None), (min(highs) if highs else None)


def integer_range(low: int | None, high: int | None) -> str:
    """A GBNF expression matching exactly the JSON integers in [low, high] (None: unbounded, up
    to `MAX_DIGITS` digits); raises `ValueError` when the range holds no integer."""
    if low is not None and high is not None and low > high:
        raise ValueError(f"no integer is >= {low} and <= {high}")
    alternatives: list[str] = []
    if low is None or low < 0:  # the negative part: "-" and a magnitude in [max(1, -high), -low]
        top = -low if low is not None else _widest(high)
        bottom = max(1, -high) if high is not None else 1
        if bottom <= top:
            alternatives += [f'"-" {s}' for s in _render(_unsigned(bottom, top))]
    if high is None or high >= 0:
        bottom = max(0, low) if low is not None else 0
        top = high if high is not None else _widest(low)
        alternatives += _render(_unsigned(bottom, top))
    return "(" + " | ".join(alternatives) + ")"


def _widest(bound: int | None) -> int:
    """The largest magnitude an unbounded side reaches: `MAX_DIGITS` digits, or the other
    bound's digits if it has more."""
    digits = max(MAX_DIGITS, len(str(abs(bound))) if bound is not None else 0)
    return int(10**digits) - 1


def _unsigned(low: int, high: int) -> list[list[DigitClass]]:
    """The digit-class sequences of the non-negative integers in [low, high] (low <= high)."""
    found: list[list[DigitClass]] = []
    for length in range(len(str(low)), len(str(high)) + 1):
        first = low if length == len(str(low)) else 10 ** (length - 1)
        last = high if length == len(str(high)) else 10**length - 1
        found += _same_length(str(first), str(last))
    return found


def _same_length(low: str, high: str) -> list[list[DigitClass]]:
    """The sequences of the numbers from `low` to `high`, two digit strings of one length."""
    if not low:
        return [[]]
    a, b, rest = int(low[0]), int(high[0]), len(low) - 1
    if a == b:
        return [[(a, a), *tail] for tail in _same_length(low[1:], high[1:])]
    zeros, nines = "0" * rest, "9" * rest
    found: list[list[DigitClass]] = []
    if low[1:] != zeros:  # the first digit `a` with the rest from low's up: its own sequences
        found += [[(a, a), *tail] for tail in _same_length(low[1:], nines)]
        a += 1
    last = b if high[1:] == nines else b - 1
    if a <= last:  # every first digit in between, with any rest
        found.append([(a, last), *[(0, 9)] * rest])
    if high[1:] != nines:
        found += [[(b, b), *tail] for tail in _same_length(zeros, high[1:])]
    return found


def _render(sequences: list[list[DigitClass]]) -> list[str]:
    return [" ".join(f'"{lo}"' if lo == hi else f"[{lo}-{hi}]" for lo, hi in sequence) for sequence in sequences]
