"""The board model without a socket: schema, legal moves, moves on a document."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Map, Text

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, entry_from_map, request_from_fields
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import TaskRequest, TaskStatus
from kanbanmesh.board.transitions import LEGAL_MOVES, Column, check_move, winner
from kanbanmesh.errors import IllegalMoveError, InvalidTaskError, TaskNotFoundError


def test_request_needs_exactly_one_of_messages_or_prompt() -> None:
    with pytest.raises(InvalidTaskError, match="exactly one"):
        request_from_fields({"id": "t1"})
    with pytest.raises(InvalidTaskError, match="exactly one"):
        request_from_fields({"id": "t1", "prompt": "x", "messages": [{"role": "user", "content": "y"}]})
    assert request_from_fields({"id": "t1", "prompt": "x"}).chat()[0].content == "x"


@pytest.mark.parametrize(
    "fields, where",
    [
        ({"id": "", "prompt": "x"}, "id"),
        ({"id": "has space", "prompt": "x"}, "id"),
        ({"id": "t", "messages": []}, "messages"),
        ({"id": "t", "messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"id": "t", "prompt": "x", "params": {"max_tokens": 0}}, "max_tokens"),
        ({"id": "t", "prompt": "x", "params": {"temperature": -1}}, "temperature"),
        ({"id": "t", "prompt": "x", "params": {"top_p": 1.5}}, "top_p"),
        ({"id": "t", "prompt": 42}, "prompt"),
        ({"id": "t", "prompt": "x", "priority": "high"}, "priority"),
    ],
)
def test_invalid_requests_name_the_field(fields: dict[str, object], where: str) -> None:
    with pytest.raises(InvalidTaskError, match=where):
        request_from_fields(fields)


def test_whole_floats_from_javascript_are_accepted_as_ints() -> None:
    req = request_from_fields({"id": "t", "prompt": "x", "params": {"max_tokens": 16.0}, "priority": 2.0})
    assert req.params.max_tokens == 16 and req.priority == 2


def test_extra_fields_are_kept() -> None:
    req = request_from_fields({"id": "t", "prompt": "x", "client_tag": "abc"})
    assert req.to_fields()["client_tag"] == "abc"


@pytest.mark.parametrize("move, writers", sorted(LEGAL_MOVES.items()))
def test_legal_moves_pass_for_their_writers_only(
    move: tuple[Column, Column], writers: frozenset[PeerRole]
) -> None:
    for writer in PeerRole:
        if writer in writers:
            check_move(*move, writer)
        else:
            with pytest.raises(IllegalMoveError):
                check_move(*move, writer)


@pytest.mark.parametrize(
    "src, dst",
    [(Column.DONE, Column.TODO), (Column.DONE, Column.DOING), (Column.TODO, Column.DOING),
     (Column.TODO, Column.TODO), (Column.DOING, Column.PREPARED)],
)
def test_illegal_moves_raise_for_everyone(src: Column, dst: Column) -> None:
    for writer in PeerRole:
        with pytest.raises(IllegalMoveError):
            check_move(src, dst, writer)


def test_winner_prefers_done_then_highest_attempt() -> None:
    assert winner([(Column.TODO, 3), (Column.DONE, 1)]) == (Column.DONE, 1)
    assert winner([(Column.DOING, 1), (Column.TODO, 2)]) == (Column.TODO, 2)


def test_move_copies_fields_and_output_in_one_update() -> None:
    doc = Doc()
    board = BoardDoc(doc)
    updates: list[bytes] = []
    board.create(TaskRequest(id="t1", prompt="hello"))
    board.move("t1", Column.TODO, Column.PREPARED, PeerRole.BROKER, set_fields={c.F_WORKER: "w", c.F_ATTEMPT: 1})
    doc.observe(lambda event: updates.append(event.update))
    board.move("t1", Column.PREPARED, Column.DOING, PeerRole.WORKER, new_output=True)
    assert len(updates) == 1
    column, ymap = board.entry("t1")
    out = ymap[c.F_OUTPUT]
    assert column is Column.DOING and isinstance(out, Text)
    out += "abc"
    board.move("t1", Column.DOING, Column.DONE, PeerRole.WORKER, set_fields={c.F_STATUS: "succeeded", c.F_RESULT: "abc"})
    column, entry = board.read("t1")
    assert column is Column.DONE
    assert entry.output == "abc" and entry.worker == "w" and entry.status is TaskStatus.SUCCEEDED
    assert board.counts() == {Column.TODO: 0, Column.PREPARED: 0, Column.DOING: 0, Column.DONE: 1}


def test_an_entry_is_written_as_pycrdt_writes_a_map_of_its_fields() -> None:
    """`BoardDoc` writes plain fields below pycrdt's API: the update is the one pycrdt's
    `column[key] = Map(fields)` makes, byte for byte."""

    def fields() -> dict[str, object]:
        # One key per object: Yrs encodes an object's keys in hash order, not the same each time.
        return {"id": "t1", "prompt": "hi", "params": {"stop": ["x", 2]}, "priority": 0,
                "created_at": 1.5, "cancel": False, "none": None, c.F_OUTPUT: Text("so far")}

    ours: Doc = Doc(client_id=7)
    BoardDoc(ours).put_fields(Column.TODO, "t1", fields())
    pycrdts: Doc = Doc(client_id=7)
    pycrdts.get(c.TODO, type=Map)["t1"] = Map(fields())
    assert ours.get_update() == pycrdts.get_update()


def test_illegal_move_leaves_the_document_untouched() -> None:
    board = BoardDoc(Doc())
    board.create(TaskRequest(id="t1", prompt="hello"))
    before = board.doc.get_update()
    with pytest.raises(IllegalMoveError):
        board.move("t1", Column.TODO, Column.DONE, PeerRole.CLIENT)
    with pytest.raises(TaskNotFoundError):
        board.move("nope", Column.TODO, Column.PREPARED, PeerRole.BROKER)
    assert board.doc.get_update() == before


def test_locate_resolves_duplicates_after_concurrent_moves() -> None:
    a, b = Doc(), Doc()
    board_a, board_b = BoardDoc(a), BoardDoc(b)
    board_a.create(TaskRequest(id="t1", prompt="x"))
    b.apply_update(a.get_update())
    # a requeue racing a late finish, written on two replicas
    board_a.move("t1", Column.TODO, Column.DONE, PeerRole.BROKER, set_fields={c.F_STATUS: "cancelled"})
    board_b.move("t1", Column.TODO, Column.PREPARED, PeerRole.BROKER, set_fields={c.F_ATTEMPT: 2})
    a.apply_update(b.get_update())
    b.apply_update(a.get_update())
    assert board_a.locate("t1") is Column.DONE and board_b.locate("t1") is Column.DONE


def test_entry_from_map_reports_garbage() -> None:
    doc = Doc()
    todo = doc.get("todo", type=Map)
    todo["bad"] = Map({"id": "bad"})
    with pytest.raises(InvalidTaskError):
        entry_from_map(todo["bad"])
