"""The conversation store records turns on the event loop and writes them off it, in order,
without a follow-up ever missing the turn before it."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from kanbanmesh.server.conversations import ConversationStore
from kanbanmesh.wire.conversations import Turn

pytestmark = pytest.mark.anyio


def turns(question: str) -> list[Turn]:
    return [Turn(role="user", content=question), Turn(role="assistant", content=f"echo: {question}")]


async def test_a_recorded_turn_is_read_back_before_and_after_it_reaches_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "conversations.sqlite3"
    async with ConversationStore(path) as store:
        store.record("b", "alice", "c1", "t1", turns("one"))
        # Not written yet (the writer has not had a turn): a read writes what was recorded first.
        assert [t.content for t in store.history("b", "alice", "c1")] == ["one", "echo: one"]
        store.record("b", "alice", "c1", "t2", turns("two"))
        store.record("b", "alice", "c1", "t2", turns("two"))  # seen finishing twice: once
        store.record("b", "bob", "c1", "t3", turns("bob's"))
        with anyio.fail_after(5):
            while store._unwritten:  # the writer thread drains them
                await anyio.sleep(0.01)
        store.record("b", "alice", "c1", "t4", turns("four"))  # written on the way out

    async with ConversationStore(path) as reopened:
        alice = [t.content for t in reopened.turns("b", "alice", "c1")]
        assert alice == ["one", "echo: one", "two", "echo: two", "four", "echo: four"]
        assert [t.content for t in reopened.turns("b", "bob", "c1")] == ["bob's", "echo: bob's"]
        assert await reopened.delete("b", "alice", "c1") == 6
