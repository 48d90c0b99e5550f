"""Task entries as the broker reads them: checked before the broker acts on them, and the
small failed entry that replaces one it cannot act on.

The server checks every entry a peer writes, but an entry can still reach the broker unchecked:
loaded from disk (written by an older version, or by hand), through a hole in that check, or,
for a standalone broker, from a server that checks less. Whatever the board holds, the broker
must neither crash on it nor write it back worse. Its hot paths read only a few fields of an
entry (the order of a queued task, the worker of a held one): those are checked here as the
server's schema types them (`TaskEntry`: the same lax conversions, so that no entry the server
accepts is refused here) and within the value bounds (finite numbers, safe integers). Where
the broker rewrites a whole entry on a rare path (a requeue, a cancel) it checks the whole
entry first (`checked_entry`). An entry that fails is failed
(`kanbanmesh.board.invalid.invalid_entry`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import entry_from_fields, explain_invalid
from kanbanmesh.board.limits import MAX_SAFE_INTEGER, EntryLimits, check_fields, value_problem
from kanbanmesh.board.reads import NotAMap, Unreadable
from kanbanmesh.board.schema import TaskEntry, TaskKind
from kanbanmesh.errors import InvalidTaskError


class BrokerFields(BaseModel):
    """The fields of an entry the broker reads on its hot paths, typed as `TaskEntry` types
    them (tests/broker/test_entries.py holds the two together)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    priority: int = 0
    created_at: float = 0.0
    retry_at: float | None = None
    cancel: bool = False
    enriching: list[str] | None = None
    worker: str | None = None
    attempt: int = 0
    kind: TaskKind | None = None


class Fields(NamedTuple):
    """What `broker_fields` read: the fields of `BrokerFields`, as its values."""

    model: str = ""
    priority: int = 0
    created_at: float = 0.0
    retry_at: float | None = None
    cancel: bool = False
    enriching: list[str] | None = None
    worker: str | None = None
    attempt: int = 0
    kind: TaskKind | None = None


def broker_fields(values: Mapping[str, Any]) -> Fields:
    """`values` (some of an entry's fields, as read) checked; raises `InvalidTaskError`."""
    # Nearly every entry holds each field as its natural type: taken as it is, that costs a
    # fifth of a validation, on every task the broker queues, assigns and sees held.
    taken: dict[str, Any] = {}
    for name, value in values.items():
        natural = _NATURAL.get(name)
        value = _UNNATURAL if natural is None else natural(value)
        if value is _UNNATURAL:
            break
        taken[name] = value
    else:
        return Fields(**taken)
    for name, value in values.items():
        problem = value_problem(value, _BOUNDS)
        if problem is not None:
            raise InvalidTaskError(f"invalid task: {name}: {problem}")
    try:
        model = BrokerFields.model_validate(values)
    except ValidationError as exc:
        raise InvalidTaskError(explain_invalid(exc)) from exc
    _check_attempt(model.attempt)
    return Fields(**{name: getattr(model, name) for name in values if name in Fields._fields})


def checked_entry(task_id: str, raw: Any, limits: EntryLimits) -> TaskEntry:
    """A whole entry, as `read_entry` read it, checked as the server checks a written one
    (bar the sizes, which are the server's business); raises `InvalidTaskError`."""
    if isinstance(raw, Unreadable):
        raise InvalidTaskError(f"invalid task: {raw.reason}")
    if not isinstance(raw, dict):
        inner = raw.value if isinstance(raw, NotAMap) else raw
        kind = "a plain object" if isinstance(inner, dict) else type(inner).__name__
        raise InvalidTaskError(f"invalid task: the entry must be a Y.Map, not {kind}")
    if raw.get(c.F_ID) != task_id:
        raise InvalidTaskError("invalid task: its id differs from its key")
    check_fields(raw, limits, measure_request=False, measure_entry=False)
    entry = entry_from_fields(raw)
    # Whole floats pass as integers, 1e300 too: the broker writes `attempt + 1` and copies the
    # records' attempts, and Yrs cannot take an integer past 64 bits (it panics).
    _check_attempt(entry.attempt)
    for record in entry.attempts:
        _check_attempt(record.attempt)
    return entry


_UNNATURAL = object()  # `_NATURAL`: a value that needs the whole validation
_KINDS: dict[str | None, TaskKind | None] = {None: None, **{kind.value: kind for kind in TaskKind}}


def _safe_int(value: Any) -> Any:
    # Numbers come back from a round trip through Yjs as floats: a whole one is an integer.
    kind = type(value)
    if kind is float and value.is_integer():
        value = int(value)
    elif kind is not int:
        return _UNNATURAL
    return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else _UNNATURAL


def _finite(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else _UNNATURAL
    return float(value) if kind is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else _UNNATURAL


def _of_type(kind: type, *, none: bool = False) -> Callable[[Any], Any]:
    return lambda value: value if type(value) is kind or (none and value is None) else _UNNATURAL


def _names(value: Any) -> Any:
    if value is None or (type(value) is list and all(type(item) is str for item in value)):
        return value
    return _UNNATURAL


# Per field: the value as `BrokerFields` would make it when it is already of its natural type
# and within the bounds, else `_UNNATURAL`.
_NATURAL: dict[str, Callable[[Any], Any]] = {
    "model": _of_type(str),
    "worker": _of_type(str, none=True),
    "priority": _safe_int,
    "attempt": _safe_int,
    "created_at": _finite,
    "retry_at": lambda value: None if value is None else _finite(value),
    "cancel": _of_type(bool),
    "enriching": _names,
    "kind": lambda value: _KINDS.get(value, _UNNATURAL) if type(value) is str or value is None else _UNNATURAL,
}


# Depth and width only matter for the whole entry (`checked_entry`); on single fields the
# bounds check numbers.
_BOUNDS = EntryLimits()


def _check_attempt(attempt: int) -> None:
    if not 0 <= attempt < MAX_SAFE_INTEGER:
        raise InvalidTaskError("invalid task: attempt: out of range")
