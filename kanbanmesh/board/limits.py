"""Bounds on what one task entry may hold: pure code, shared by every writer and the server.

The server checks every entry a peer writes against these before anything of the update is
applied (`kanbanmesh/server/validation.py`), and its own write paths (the HTTP API, the
pre-inference pipeline) against the same ones, so that no reader of the board ever meets a
value it cannot take: a value nested a thousand levels deep (Python's recursion limit), an
array of a million items, an integer past what JavaScript or Yrs can hold, or an entry bigger
than every client wants to download. Workers read the server's limits from the board (`meta`)
so that they stop before their own write would be refused.

Limits (docs/protocol.md section 2, "Limits"):

- `max_task_bytes`: the request fields of an entry (what a client writes) as UTF-8 JSON;
- `max_entry_bytes`: the whole entry, `output` and `result` included;
- `max_depth`: nesting of a field's value (`{"a": [1]}` is depth 2, a string depth 0);
- `max_items`: members of one JSON array or object, and fields of an entry;
- numbers: finite, integers within +-(2^53 - 1) (JavaScript's safe integers).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.board.reads import read_field
from kanbanmesh.board.schema import REQUEST_FIELDS
from kanbanmesh.errors import InvalidTaskError, TaskTooLargeError

MAX_SAFE_INTEGER = 2**53 - 1

# No byte of an update grows into more than this many bytes of the JSON of what it wrote
# (`json.dumps(..., ensure_ascii=False)`). An escaped control character is the worst: 1 -> 6
# (`\u0001`). Everything else grows less: a struct's own header (an info byte, a parent id, a
# key's length) turns into at most `"": , ` around its value; a one-byte value into at most 5
# (`false`), an 8-byte float into at most 24 digits. tests/server/test_validation_bounds.py
# holds the bound to the worst cases.
JSON_BYTES_PER_UPDATE_BYTE = 6


@dataclass(frozen=True)
class EntryLimits:
    """What one task entry may hold (see the module docstring)."""

    max_task_bytes: int = 1 << 20
    max_entry_bytes: int = 8 << 20
    max_depth: int = 32
    max_items: int = 10_000

    def to_json(self) -> dict[str, int]:
        """As written into the board's `meta` map (`limits`), for peers to read."""
        return asdict(self)

    @classmethod
    def of_board(cls, board: BoardDoc) -> EntryLimits | None:
        """The limits a server published in the board's `meta` map; None when it published
        none (a server of an older version)."""
        return cls.from_json(read_field(board.meta, c.M_LIMITS))

    @classmethod
    def from_json(cls, value: object) -> EntryLimits | None:
        """The limits a `meta.limits` value names; None when it is not a valid one."""
        if not isinstance(value, Mapping):
            return None
        fields: dict[str, int] = {}
        for name, default in _DEFAULTS.items():
            found = value.get(name, default)
            if not isinstance(found, int | float) or not math.isfinite(found) or found < 1:
                return None
            fields[name] = int(found)
        return cls(**fields)


_DEFAULTS = asdict(EntryLimits())


def value_problem(value: Any, limits: EntryLimits) -> str | None:
    """Why `value` (a plain JSON-like value) breaks the depth, width or number bounds, or None."""
    found = _first_problem({"": value}, limits)
    return None if found is None else found[1]


def _first_problem(fields: Mapping[str, Any], limits: EntryLimits) -> tuple[str, str] | None:
    """The first field of `fields` whose value breaks the bounds, and why; None if none does.

    One iterative walk over every value (a value nested deeper than Python's recursion limit
    is measured like any other), stopping at the first problem. It runs on every entry a peer
    writes, so the common cases (strings, small numbers) cost one type test each."""
    max_depth, max_items = limits.max_depth, limits.max_items
    stack: list[tuple[Any, int, str]] = []
    for name, value in fields.items():
        kind = type(value)
        if kind is str or kind is bool or value is None:
            continue
        if kind is dict or kind is list:
            stack.append((value, 1, name))
        else:
            problem = _scalar_problem(value, kind)
            if problem is not None:
                return name, problem
    while stack:
        item, depth, name = stack.pop()
        if depth > max_depth:
            return name, f"values nested deeper than {max_depth} levels"
        if len(item) > max_items:
            return name, f"more than {max_items} items in one array or object"
        for member in item.values() if type(item) is dict else item:
            kind = type(member)
            if kind is str or kind is bool or member is None:
                continue
            if kind is dict or kind is list:
                stack.append((member, depth + 1, name))
            else:
                problem = _scalar_problem(member, kind)
                if problem is not None:
                    return name, problem
    return None


def _scalar_problem(value: Any, kind: type) -> str | None:
    if kind is int:
        return None if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else "an integer beyond +-(2^53 - 1)"
    if kind is float:
        return None if value - value == 0.0 else "a number that is not finite"  # inf - inf is NaN
    return f"a value of type {kind.__name__}"


def json_bytes(fields: Mapping[str, Any]) -> int:
    """The UTF-8 size of `fields` as compact JSON (how the limits measure an entry)."""
    return len(json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8"))


def check_fields(
    fields: Mapping[str, Any], limits: EntryLimits, *, measure_request: bool = True,
    measure_entry: bool = True,
) -> None:
    """Raise `InvalidTaskError` when an entry's plain fields break the value bounds, or
    `TaskTooLargeError` when its request (`measure_request`) or the whole entry
    (`measure_entry`) is over its size limit. The caller may skip a measure it knows cannot
    fail (an update too small to hold that much JSON)."""
    if len(fields) > limits.max_items:
        raise InvalidTaskError(f"invalid task: more than {limits.max_items} fields")
    found = _first_problem(fields, limits)
    if found is not None:
        raise InvalidTaskError(f"invalid task: {found[0][:40]}: {found[1]}")
    if measure_request:
        request = {k: v for k, v in fields.items() if k in REQUEST_FIELDS}
        size = json_bytes(request)
        if size > limits.max_task_bytes:
            raise TaskTooLargeError(
                f"its request is {size} bytes, over the limit of {limits.max_task_bytes}"
            )
    if measure_entry:
        size = json_bytes(fields)
        if size > limits.max_entry_bytes:
            raise TaskTooLargeError(
                f"the entry is {size} bytes, over the limit of {limits.max_entry_bytes}"
            )
