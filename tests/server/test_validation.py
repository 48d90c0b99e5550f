"""The validator's lifecycle: a validator the room leaves behind (at a rotation) lets go of
its twin and of the board document."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from pycrdt import Doc, Map

from kanbanmesh.board import constants as c
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.server.validation import UpdateValidator


def test_a_closed_validator_lets_its_documents_go() -> None:
    board: Doc[Any] = Doc()
    board.get(c.TODO, type=Map)["t"] = Map({c.F_ID: "t"})
    validator = UpdateValidator(board, EntryLimits())
    validator.check(Doc().get_update())
    gone = [weakref.ref(board), weakref.ref(validator), weakref.ref(validator._twin)]
    validator.close()
    del board, validator
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]


def _task_update(writer: Doc[Any], column: str, task_id: str, fields: dict[str, Any]) -> bytes:
    """The update of `writer` that puts a new entry into `column` (and nothing else)."""
    updates: list[bytes] = []
    sub = writer.observe(lambda event: updates.append(event.update))
    writer.get(column, type=Map)[task_id] = Map({c.F_ID: task_id, **fields})
    writer.unobserve(sub)
    return updates[-1]


def test_the_servers_own_writes_reach_the_twin_at_catch_up() -> None:
    """The room mirrors the server's writes and calls `catch_up` after its sends; an update
    that builds on such a write then passes, and so does one after it (the state vector the
    catch-up read serves as the next check's state before)."""
    board: Doc[Any] = Doc()
    validator = UpdateValidator(board, EntryLimits())
    updates: list[bytes] = []
    sub = board.observe(lambda event: updates.append(event.update))
    board.get(c.TODO, type=Map)["t"] = Map({c.F_ID: "t", "prompt": "p"})  # the server's write
    board.unobserve(sub)
    assert validator.mirror(updates[0]) is True  # the first: a catch-up is due
    assert validator.mirror(b"\x00\x00") is False  # already due
    validator.catch_up()
    assert str(validator._twin.get(c.TODO, type=Map)["t"]["prompt"]) == "p"

    peer: Doc[Any] = Doc()
    peer.apply_update(board.get_update())
    before = peer.get_state()
    with peer.transaction():  # a move of the server's entry: needs it on the twin
        del peer.get(c.TODO, type=Map)["t"]
        peer.get(c.DONE, type=Map)["t"] = Map({c.F_ID: "t", "prompt": "p", "status": "cancelled"})
    move = peer.get_update(before)
    validator.check(move)
    board.apply_update(move)
    validator.check(_task_update(peer, c.TODO, "u", {"prompt": "q"}))
    assert validator.created == ["u"]
