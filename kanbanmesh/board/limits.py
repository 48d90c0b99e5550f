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

from pycrdt import Doc, Map

from kanbanmesh.board import constants as c
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
    def of_board(cls, doc: Doc[Any]) -> EntryLimits | None:
        """The limits a server published in the board's `meta` map; None when it published
        none (a server of an older version)."""
        return cls.from_json(doc.get(c.META, type=Map).get(c.M_LIMITS))

    @classmethod
    def from_json(cls, value: object) -> EntryLimits | None:
        """The limits a `meta.limits` value names; None when it is not a valid one."""
        if not isinstance(value, Mapping):
            return None
        fields: dict[str, int] = {}
        for name, default in asdict(cls()).items():
            found = value.get(name, default)
            if not isinstance(found, int | float) or not math.isfinite(found) or found < 1:
                return None
            fields[name] = int(found)
        return cls(**fields)


def value_problem(value: Any, limits: EntryLimits) -> str | None:
    """Why `value` (a plain JSON-like value) breaks the depth, width or number bounds, or None.

    Iterative, so that a value nested deeper than Python's recursion limit is measured like
    any other, and stops at the first problem."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return "an integer beyond +-(2^53 - 1)"
            continue
        if kind is float:
            if not math.isfinite(item):
                return "a number that is not finite"
            continue
        if kind is dict or kind is list:
            if depth >= limits.max_depth:
                return f"values nested deeper than {limits.max_depth} levels"
            if len(item) > limits.max_items:
                return f"more than {limits.max_items} items in one array or object"
            members = item.values() if kind is dict else item
            stack.extend((member, depth + 1) for member in members)
            continue
        return f"a value of type {kind.__name__}"
    return None


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
    for name, value in fields.items():
        problem = value_problem(value, limits)
        if problem is not None:
            raise InvalidTaskError(f"invalid task: {name[:40]}: {problem}")
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
