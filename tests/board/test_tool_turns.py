"""Turns of an agent loop as the broker names prefixes and as the worker reads them agree."""

from __future__ import annotations

from kanbanmesh.board.document import entry_from_fields
from kanbanmesh.board.prefix import task_turns


def test_an_assistant_turn_with_only_calls_reads_the_same_for_broker_and_worker() -> None:
    fields = {"id": "t", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]}
    worker = [(m.role, m.content) for m in entry_from_fields(fields).chat()]
    assert task_turns(fields) == worker == [("user", "Weather?"), ("assistant", ""), ("tool", "sunny")]
