"""The size limit of a new task, measured only where it can be crossed.

The validator skips measuring the JSON of an entry that came whole in an update too small to
hold that much JSON (`JSON_BYTES_PER_UPDATE_BYTE`). These tests hold that bound to the worst
contents an update can carry, and check that a task whose JSON is over the limit is still
refused when its update is not.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from kanbanmesh.board import constants as c
from kanbanmesh.board.limits import JSON_BYTES_PER_UPDATE_BYTE, EntryLimits
from kanbanmesh.board.reads import plain_fields
from kanbanmesh.board.schema import REQUEST_FIELDS
from kanbanmesh.server.validation import UpdateRefused, UpdateValidator


def _new_entry_update(fields: dict[str, Any], key: str = "t") -> tuple[bytes, dict[str, Any]]:
    """The update that creates `fields` as a new entry in `todo`, and the entry's fields as
    the validator reads them back."""
    writer: Doc[Any] = Doc()
    todo = writer.get(c.TODO, type=Map)
    todo[key] = Map(fields)
    return writer.get_update(), plain_fields(todo[key])


def _request_json_bytes(fields: dict[str, Any]) -> int:
    # As the validator measures it.
    request = {k: v for k, v in fields.items() if k in REQUEST_FIELDS}
    return len(json.dumps(request, ensure_ascii=False, default=str).encode("utf-8"))


# Values whose JSON is longest for the bytes they take in an update.
_WORST_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=40),  # escaped as \u00XX
    st.text(max_size=40),
)
_VALUES = st.recursive(
    _WORST_SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=6),
    max_leaves=30,
)
# Request fields only: they are what is measured (the others never count).
_REQUEST_KEYS = sorted(REQUEST_FIELDS)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_REQUEST_KEYS), _VALUES, min_size=1))
def test_no_update_holds_more_json_than_the_bound(fields: dict[str, Any]) -> None:
    update, read_back = _new_entry_update(fields)
    assert _request_json_bytes(read_back) <= JSON_BYTES_PER_UPDATE_BYTE * len(update)


@pytest.mark.parametrize(
    "value",
    [
        "\x01" * 500,  # the worst character: 1 byte, 6 in JSON
        [None] * 200,  # `null, ` for each one-byte value
        [False] * 200,
        {"": None},
        [[]] * 100,
        [1e-308] * 50,
    ],
)
def test_the_worst_values_stay_within_the_bound(value: Any) -> None:
    update, read_back = _new_entry_update({c.F_ID: "t", "prompt": value})
    assert _request_json_bytes(read_back) <= JSON_BYTES_PER_UPDATE_BYTE * len(update)


def test_a_task_over_the_limit_only_as_json_is_refused() -> None:
    """400 control characters: ~480 bytes of update, 2,400 bytes of JSON over a limit of
    2,048. The update alone is under the limit: the validator must measure the JSON."""
    board: Doc[Any] = Doc()
    validator = UpdateValidator(board, EntryLimits(max_task_bytes=2048))
    update, read_back = _new_entry_update({c.F_ID: "t", "prompt": "\x01" * 400})
    assert len(update) < 2048 < _request_json_bytes(read_back)
    with pytest.raises(UpdateRefused) as refused:
        validator.check(update)
    assert refused.value.code == c.CLOSE_TASK_TOO_LARGE


def test_a_small_task_in_a_small_update_passes_unmeasured() -> None:
    board: Doc[Any] = Doc()
    validator = UpdateValidator(board, EntryLimits(max_task_bytes=2048))
    update, _ = _new_entry_update({c.F_ID: "t", "prompt": "hello"})
    assert len(update) * JSON_BYTES_PER_UPDATE_BYTE <= 2048
    validator.check(update)
    assert validator.created == ["t"]


def test_a_field_set_inside_an_entry_is_always_measured() -> None:
    """A field written into an existing entry adds to what the entry already holds, which was
    not in the update: that check cannot lean on the update's size."""
    board: Doc[Any] = Doc()
    validator = UpdateValidator(board, EntryLimits(max_task_bytes=2048))
    writer: Doc[Any] = Doc()
    todo = writer.get(c.TODO, type=Map)
    todo["t"] = Map({c.F_ID: "t", "prompt": "p" * 1950})
    first = writer.get_update()
    validator.check(first)  # ~1,980 bytes of JSON: under the limit
    board.apply_update(first)
    before = writer.get_state()
    todo["t"]["owner"] = "o" * 100
    field_update = writer.get_update(before)
    assert len(field_update) * JSON_BYTES_PER_UPDATE_BYTE <= 2048  # small enough to skip
    with pytest.raises(UpdateRefused) as refused:
        validator.check(field_update)
    assert refused.value.code == c.CLOSE_TASK_TOO_LARGE
