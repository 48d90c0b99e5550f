"""The broker's checks of the fields it reads: the server's schema, no more, no less."""

from __future__ import annotations

import math

import pytest

from broker.entries import BrokerFields, broker_fields, checked_entry
from broker.repair import START_TIMEOUT, spent_attempts
from kanbanmesh.board.invalid import invalid_entry
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.board.reads import NotAMap, Unreadable
from kanbanmesh.board.schema import TaskEntry
from kanbanmesh.errors import InvalidTaskError


def test_broker_fields_are_typed_as_the_schema_types_them() -> None:
    for name, info in BrokerFields.model_fields.items():
        schema = TaskEntry.model_fields[name]
        assert (info.annotation, info.default, info.metadata) == (
            schema.annotation, schema.default, schema.metadata
        ), name


@pytest.mark.parametrize(
    "values",
    [
        {"priority": "5", "attempt": 2.0, "cancel": "true", "created_at": 1},  # lax, as the server
        {"model": "smol", "retry_at": None, "enriching": ["history"], "worker": "w"},
        {},
    ],
)
def test_what_the_server_accepts_the_broker_accepts(values: dict[str, object]) -> None:
    TaskEntry.model_validate({"id": "t", "prompt": "p", **values})
    broker_fields(values)


@pytest.mark.parametrize(
    "values",
    [
        {"priority": math.nan},
        {"created_at": math.inf},
        {"created_at": "yesterday"},
        {"priority": {"a": 1}},
        {"attempt": 1e300},  # a whole float: an integer Yrs could not take back
        {"attempt": 2**60},
        {"cancel": "maybe"},
        {"worker": 42},
        {"enriching": "history"},
    ],
)
def test_malformed_fields_are_invalid(values: dict[str, object]) -> None:
    with pytest.raises(InvalidTaskError):
        broker_fields(values)


def test_a_whole_entry_is_checked_as_the_server_checks_it() -> None:
    limits = EntryLimits()
    entry = checked_entry("t", {"id": "t", "prompt": "p", "attempt": 2.0}, limits)
    assert entry.attempt == 2
    deep: list[object] = []
    for _ in range(40):
        deep = [deep]
    for raw in (
        Unreadable("values nested too deep to read"),
        NotAMap("a string"),
        NotAMap({"id": "t", "prompt": "p"}),
        {"id": "other", "prompt": "p"},
        {"id": "t", "messages": 5},
        {"id": "t", "prompt": "p", "context": deep},
        {"id": "t", "prompt": "p", "attempts": [{"attempt": 1e300, "worker": "w", "reason": "x"}]},
    ):
        with pytest.raises(InvalidTaskError):
            checked_entry("t", raw, limits)


def test_the_failed_entry_copies_nothing_but_id_owner_and_creation_time() -> None:
    entry = invalid_entry("t", "alice", 1234.0, "invalid task: why")
    assert entry["owner"] == "alice" and entry["created_at"] == 1234.0
    assert entry["status"] == "failed" and entry["error"] == {"code": "invalid_task", "message": "invalid task: why"}
    TaskEntry.model_validate(entry)  # every reader can read it
    bad = invalid_entry("t", {"x": 1}, math.nan, "m" * 10_000)
    assert bad["owner"] == "" and math.isfinite(bad["created_at"]) and len(bad["error"]["message"]) == 500


def test_start_timeouts_do_not_count_as_spent_attempts() -> None:
    history = [{"reason": START_TIMEOUT}, {"reason": "worker_lost"}, {"reason": START_TIMEOUT}]
    assert spent_attempts(history) == 1


@pytest.mark.parametrize(
    "values",
    [
        {"priority": 0.0, "attempt": 3.0, "created_at": 5, "retry_at": None},  # after a Yjs round trip
        {"priority": -7, "attempt": 0, "created_at": 1.5, "retry_at": 2.0},
        {"model": "m", "cancel": False, "enriching": ["history"], "worker": None},
        {"enriching": None, "worker": "w", "cancel": True},
        {"priority": True, "cancel": 1, "created_at": "5"},  # the whole validation, same answer
    ],
)
def test_the_quick_path_reads_values_as_the_validation_does(values: dict[str, object]) -> None:
    model = BrokerFields.model_validate(values)
    fields = broker_fields(values)
    assert {name: getattr(fields, name) for name in values} == {name: getattr(model, name) for name in values}
    assert all(type(getattr(fields, name)) is type(getattr(model, name)) for name in values)
