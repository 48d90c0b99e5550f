"""The GBNF of an integer range matches exactly the JSON integers in it.

The generated expressions use only literals, digit classes, sequences and alternatives, so each
is translated to a Python regular expression here and matched against integers in and out of
its range (the bundled model writes under the real grammars in tests/worker/test_grammar_ranges.py).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.backends.integer_ranges import MAX_DIGITS, integer_bounds, integer_range

_TOKEN = re.compile(r'\s*(?:"(?P<literal>[^"]*)"|(?P<cls>\[[0-9]-[0-9]\])|(?P<bar>\|)|(?P<paren>[()]))')


def as_regex(gbnf: str) -> re.Pattern[str]:
    """`gbnf`, an expression of literals, digit classes, `|` and parentheses, as a regex; fails
    on anything else (the generator must not write more than the test understands)."""
    parts, at = [], 0
    while at < len(gbnf):
        found = _TOKEN.match(gbnf, at)
        assert found is not None and found.end() > at, f"unexpected GBNF at {at}: {gbnf[at:at + 20]!r}"
        at = found.end()
        if found["literal"] is not None:
            parts.append(re.escape(found["literal"]))
        else:
            parts.append(found["cls"] or found["bar"] or found["paren"])
    return re.compile("".join(parts))


def matches(gbnf: str, value: int) -> bool:
    return as_regex(gbnf).fullmatch(str(value)) is not None


bounds = st.integers(-(10**12), 10**12) | st.integers(-300, 300)


@given(low=bounds, high=bounds, data=st.data())
def test_exactly_the_integers_of_a_range(low: int, high: int, data: st.DataObject) -> None:
    low, high = min(low, high), max(low, high)
    pattern = as_regex(integer_range(low, high))
    inside = [low, high, *data.draw(st.lists(st.integers(low, high), max_size=20))]
    inside += [v for v in (0, -1, 1, 9, 10, -9, -10, 99, 100) if low <= v <= high]
    for value in inside:
        assert pattern.fullmatch(str(value)), (low, high, value)
    outside = [low - 1, high + 1, low - 10, high + 10, low - 1000, high + 1000, *data.draw(
        st.lists(st.integers(-(10**13), low - 1) | st.integers(high + 1, 10**13), max_size=20))]
    for value in outside:
        assert not pattern.fullmatch(str(value)), (low, high, value)


@given(bound=bounds, data=st.data())
def test_one_sided_ranges(bound: int, data: st.DataObject) -> None:
    at_least, at_most = as_regex(integer_range(bound, None)), as_regex(integer_range(None, bound))
    for value in [bound, bound + 1, bound - 1, *data.draw(st.lists(st.integers(-(10**14), 10**14), max_size=20))]:
        assert bool(at_least.fullmatch(str(value))) == (value >= bound), (bound, value)
        assert bool(at_most.fullmatch(str(value))) == (value <= bound), (bound, value)
    # An unbounded side reaches as far as the converter's own integers: 16 digits.
    assert at_least.fullmatch("9" * MAX_DIGITS) and not at_least.fullmatch("1" + "0" * MAX_DIGITS)


@given(low=st.integers(-50, 50), high=st.integers(-50, 50))
def test_never_a_leading_zero_or_minus_zero(low: int, high: int) -> None:
    low, high = min(low, high), max(low, high)
    pattern = as_regex(integer_range(low, high))
    for text in ("-0", "00", "01", "-01", "007", "+1", "", "-"):
        assert not pattern.fullmatch(text)


def test_an_empty_range_is_refused() -> None:
    with pytest.raises(ValueError, match="no integer"):
        integer_range(5, 4)


@pytest.mark.parametrize(("schema", "expected"), [
    ({"minimum": 0, "maximum": 23}, (0, 23)),
    ({"exclusiveMinimum": 0, "exclusiveMaximum": 24}, (1, 23)),
    ({"minimum": 0.5, "maximum": 9.5}, (1, 9)),
    ({"exclusiveMinimum": 0.5, "exclusiveMaximum": 9.5}, (1, 9)),
    ({"minimum": -3, "exclusiveMinimum": 0}, (1, None)),
    ({"maximum": 10, "exclusiveMaximum": 5}, (None, 4)),
    ({"minimum": True, "exclusiveMaximum": "x"}, (None, None)),  # not numbers: left to the check
    ({"minimum": 1e40}, (None, None)),  # too large to be worth a grammar: left to the check
    ({}, (None, None)),
])
def test_bounds_of_a_schema(schema: dict[str, object], expected: tuple[int | None, int | None]) -> None:
    assert integer_bounds(schema) == expected
