"""`observe_events` sees what pycrdt's own `observe` / `observe_deep` see, read lazily."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pycrdt import Doc, Map, Text

from kanbanmesh.board.events import (
    change_value,
    event_keys,
    event_path,
    is_map_event,
    observe_events,
)
from kanbanmesh.board.reads import read_field


def _summary(events: list[Any], ymap: Map[Any]) -> list[tuple[Any, ...]]:
    """What a board observer reads of events: kind, path, actions, and the new values (an
    integrated map by its plain content)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if not is_map_event(event):
            out.append(("text", tuple(event_path(event))))
            continue
        changes = []
        for key, change in sorted(event_keys(event).items()):
            value = change_value(change, ymap)
            shown = value.to_py() if isinstance(value, Map | Text) else value
            changes.append((key, change.get("action"), type(value).__name__, repr(shown)))
        out.append(("map", tuple(event_path(event)), tuple(changes)))
    return out


def _edits(doc: Doc[Any]) -> list[Callable[[], None]]:
    todo = doc.get("todo", type=Map)
    done = doc.get("done", type=Map)

    def create() -> None:
        todo["t1"] = Map({"id": "t1", "prompt": "hi", "meta": {"a": [1]}})

    def set_field() -> None:
        todo["t1"]["cancel"] = True

    def add_text() -> None:
        todo["t1"]["output"] = Text("x")

    def append() -> None:
        output = todo["t1"]["output"]
        assert isinstance(output, Text)
        output += "yz"

    def move() -> None:
        with doc.transaction():
            fields = todo["t1"].to_py()
            del todo["t1"]
            done["t1"] = Map({k: v for k, v in fields.items() if k != "output"})

    return [create, set_field, add_text, append, move]


@pytest.mark.parametrize("deep", [False, True])
def test_observe_events_reads_as_pycrdt_observers(deep: bool) -> None:
    doc: Doc[Any] = Doc()
    seen: dict[str, list[Any]] = {"pycrdt": [], "lazy": []}
    def recorder(kind: str, ymap: Map[Any]) -> Callable[[Any], None]:
        def record(events: Any) -> None:  # one parameter: pycrdt then passes no transaction
            seen[kind].append(_summary(events if deep else [events], ymap))

        return record

    for name in ("todo", "done"):
        ymap = doc.get(name, type=Map)
        observe_events(ymap, recorder("lazy", ymap), deep=deep)
        (ymap.observe_deep if deep else ymap.observe)(recorder("pycrdt", ymap))
    for edit in _edits(doc):
        edit()
    assert seen["lazy"] == seen["pycrdt"]
    assert seen["lazy"]  # the edits were seen at all


def test_reads_inside_the_callback_use_the_updates_transaction() -> None:
    doc: Doc[Any] = Doc()
    todo = doc.get("todo", type=Map)
    owners: list[Any] = []

    def on_event(event: Any) -> None:
        for change in event_keys(event).values():
            entry = change_value(change, todo)
            owners.append(read_field(entry, "owner") if isinstance(entry, Map) else None)

    observe_events(todo, on_event)
    todo["t1"] = Map({"owner": "ana"})
    remote: Doc[Any] = Doc()
    remote.get("todo", type=Map)["t2"] = Map({"owner": "bo"})
    doc.apply_update(remote.get_update())
    assert owners == ["ana", "bo"]


def test_a_failing_callback_raises_at_the_end_of_the_transaction_and_unobserve_stops_it() -> None:
    doc: Doc[Any] = Doc()
    todo = doc.get("todo", type=Map)
    calls = []

    def broken(event: Any) -> None:
        calls.append(event)
        raise ValueError("observer bug")

    subscription = observe_events(todo, broken)
    with pytest.raises(ExceptionGroup, match="Observer callback error"):  # as pycrdt raises it
        todo["t1"] = 1
    todo.unobserve(subscription)
    todo["t2"] = 2
    assert len(calls) == 1
