"""The validator's pending check, in process: an update that would leave structs or deletions
pending on the board is refused; every legitimate kind of update is not; garbage is refused
with a code, never raised as anything else.

The board here is a plain `Doc` with an `UpdateValidator` on it, as the room holds them; each
accepted update is then applied to the board, as the room does.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Text, get_update, merge_updates

from kanbanmesh.board import constants as c
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.errors import ProtocolError
from kanbanmesh.protocol import codec
from kanbanmesh.server.validation import UpdateRefused, UpdateValidator
from tests.server.test_fuzz import PENDING_SHAPES


def _task(key: str, **extra: Any) -> Map[Any]:
    return Map({c.F_ID: key, c.F_OWNER: "x", c.F_PROMPT: "p", c.F_CREATED_AT: 1.0, **extra})


class Board:
    """A board document behind a validator: `send` checks an update and applies it."""

    def __init__(self) -> None:
        self.doc: Doc[Any] = Doc()
        self.validator = UpdateValidator(self.doc, EntryLimits())

    def send(self, update: bytes) -> None:
        self.validator.check(update)
        self.doc.apply_update(update)

    def refuses(self, update: bytes) -> UpdateRefused:
        state = self.doc.get_state()
        with pytest.raises(UpdateRefused) as info:
            self.send(update)
        assert self.doc.get_state() == state  # nothing of it reached the board
        return info.value


class Peer:
    """A replica that writes; `write` returns its update since its previous one."""

    def __init__(self, board: Board | None = None) -> None:
        self.doc: Doc[Any] = Doc()
        if board is not None:
            self.doc.apply_update(board.doc.get_update())

    def write(self, act: Any) -> bytes:
        before = self.doc.get_state()
        with self.doc.transaction():
            act(self.doc)
        return self.doc.get_update(before)

    def learn(self, update: bytes) -> None:
        self.doc.apply_update(update)


def _todo(doc: Doc[Any]) -> Map[Any]:
    todo: Map[Any] = doc.get(c.TODO, type=Map)
    return todo


def _create(key: str, **extra: Any) -> Any:
    return lambda doc: _todo(doc).__setitem__(key, _task(key, **extra))


# -- accepted: what well-behaved peers send ------------------------------------------------------


def test_a_workers_text_appends_are_accepted() -> None:
    board, worker = Board(), Peer()
    board.send(worker.write(_create("t1", output=Text())))
    for i in range(50):
        def append(doc: Doc[Any], i: int = i) -> None:
            text = _todo(doc)["t1"][c.F_OUTPUT]
            text += f"w{i} "
        board.send(worker.write(append))
    assert str(board.doc.get(c.TODO, type=Map)["t1"][c.F_OUTPUT]).startswith("w0 w1 ")


def test_moves_and_deletions_of_known_items_are_accepted() -> None:
    board, client = Board(), Peer()
    board.send(client.write(_create("t1")))
    broker = Peer(board)

    def move(doc: Doc[Any]) -> None:
        fields = _todo(doc)["t1"].to_py()
        del _todo(doc)["t1"]
        doc.get(c.PREPARED, type=Map)["t1"] = Map({**fields, c.F_WORKER: "w"})

    board.send(broker.write(move))
    board.send(broker.write(lambda doc: doc.get(c.PREPARED, type=Map).pop("t1")))
    assert "t1" not in board.doc.get(c.PREPARED, type=Map) and "t1" not in _todo(board.doc)


def test_a_whole_state_resync_and_echoes_are_accepted() -> None:
    board, alice, bob = Board(), Peer(), Peer()
    for i in range(5):
        update = alice.write(_create(f"a{i}"))
        board.send(update)
        bob.learn(update)
    board.send(bob.write(lambda doc: _todo(doc).pop("a0")))
    bob.learn(alice.write(_create("a5")))  # bob heard of it first (another server, say)
    board.send(bob.doc.get_update())  # the whole state: known, new, deletions, all at once
    board.send(alice.doc.get_update())  # an echo of what the board has
    board.send(bob.doc.get_update(board.doc.get_state()))  # a sync step 2: nothing new
    board.send(codec.EMPTY_UPDATE)
    assert sorted(_todo(board.doc).keys()) == ["a1", "a2", "a3", "a4", "a5"]


def test_merged_updates_of_two_writers_the_board_knows_are_accepted() -> None:
    board, alice = Board(), Peer()
    board.send(alice.write(_create("a")))
    bob = Peer(board)
    first = alice.write(lambda doc: _todo(doc)["a"].__setitem__(c.F_CANCEL, True))
    second = bob.write(_create("b"))
    bob.learn(first)
    third = bob.write(lambda doc: _todo(doc).pop("a"))  # depends on alice's cancel: in the merge
    board.send(merge_updates(first, second, third))
    # Consecutive updates of one writer, merged as a peer queues them.
    board.send(merge_updates(*(alice.write(_create(f"q{i}")) for i in range(3))))
    assert sorted(_todo(board.doc).keys()) == ["b", "q0", "q1", "q2"]


def test_an_update_whose_dependencies_came_just_before_is_accepted() -> None:
    board, alice = Board(), Peer()
    creation = alice.write(_create("a", output=Text()))
    bob = Peer()
    bob.learn(creation)
    insert = bob.write(lambda doc: _todo(doc)["a"][c.F_OUTPUT].insert(0, "x"))
    board.refuses(insert)
    board.send(creation)
    board.send(insert)  # the same update, once the board has what it builds on
    assert str(_todo(board.doc)["a"][c.F_OUTPUT]) == "x"


# -- refused: every shape that would stay pending ------------------------------------------------


@pytest.mark.parametrize("shape", PENDING_SHAPES)
def test_updates_that_would_stay_pending_are_refused(shape: str) -> None:
    board = Board()
    for update in PENDING_SHAPES[shape][:-1]:
        board.send(update)
    refused = board.refuses(PENDING_SHAPES[shape][-1])
    assert refused.code == c.CLOSE_INVALID_UPDATE, refused.reason


def test_a_refused_pending_update_never_integrates_later() -> None:
    """The twin drops what it kept pending: when the missing write arrives, the refused one's
    field does not appear with it (nor is the missing write refused on its account)."""
    board, alice = Board(), Peer()
    creation = alice.write(_create("a"))
    mallory = Peer()
    mallory.learn(creation)
    own_then_cancel = mallory.write(
        lambda doc: (_create("m")(doc), _todo(doc)["a"].__setitem__(c.F_CANCEL, True))
    )
    board.refuses(own_then_cancel)
    board.send(creation)
    board.send(alice.write(lambda doc: _todo(doc)["a"].__setitem__(c.F_PRIORITY, 2)))
    assert c.F_CANCEL not in _todo(board.doc)["a"] and "m" not in _todo(board.doc)
    # The twin agrees with the board: a write building on alice's is accepted.
    board.send(Peer(board).write(lambda doc: _todo(doc)["a"].__setitem__(c.F_ACK, True)))


def test_a_deletion_partly_beyond_the_board_is_refused() -> None:
    board, alice = Board(), Peer()
    known = alice.write(_create("a"))
    unknown = alice.write(_create("b"))
    board.send(known)
    bob = Peer()
    bob.learn(known)
    bob.learn(unknown)
    both = bob.write(lambda doc: (_todo(doc).pop("a"), _todo(doc).pop("b")))
    refused = board.refuses(both)
    assert "deletes" in refused.reason


# -- garbage: refused with a code, never another exception ----------------------------------------


def _valid_updates() -> list[bytes]:
    alice = Peer()
    updates = [alice.write(_create("a", output=Text("hi")))]
    updates.append(alice.write(lambda doc: _todo(doc)["a"][c.F_OUTPUT].insert(1, "é😀")))
    updates.append(alice.write(lambda doc: _todo(doc).pop("a")))
    return [*updates, merge_updates(*updates), *(u for shape in PENDING_SHAPES.values() for u in shape)]


VALID = _valid_updates()


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(("flip", "cut", "insert")))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(update=st.binary(max_size=64) | mangled())
def test_garbage_is_refused_with_a_code_or_accepted_whole(update: bytes) -> None:
    board = Board()
    try:
        board.send(update)
    except UpdateRefused as exc:
        assert exc.code in (c.CLOSE_INVALID_UPDATE, c.CLOSE_INVALID_TASK, c.CLOSE_FORBIDDEN), exc
    # Whatever happened, the twin still matches the board: a fresh writer is accepted.
    board.send(Peer(board).write(_create("t-after")))


def test_delete_set_of_a_struct_free_update() -> None:
    alice = Peer()
    creation = alice.write(_create("a"))
    deletion = alice.write(lambda doc: _todo(doc).pop("a"))
    assert codec.delete_set(creation) is None
    deleted = codec.delete_set(deletion)
    assert deleted is not None and len(deleted) == 1
    [(client, clock, length)] = deleted
    assert client == alice.doc.client_id and clock == 0 and length >= 1
    assert codec.delete_set(codec.EMPTY_UPDATE) == []
    with pytest.raises(ProtocolError):
        codec.delete_set(deletion + b"\x00")


def _delete_set_update(ranges: list[tuple[int, int, int]]) -> bytes:
    by_client: dict[int, list[tuple[int, int]]] = {}
    for client, clock, length in ranges:
        by_client.setdefault(client, []).append((clock, length))
    out = [codec.var_uint(0), codec.var_uint(len(by_client))]
    for client, pairs in by_client.items():
        out += [codec.var_uint(client), codec.var_uint(len(pairs))]
        out += [codec.var_uint(clock) + codec.var_uint(length) for clock, length in pairs]
    return b"".join(out)


def _beyond(ranges: list[tuple[int, int, int]], state: dict[int, int]) -> bool:
    return any(clock + length > state.get(client, 0) for client, clock, length in ranges)


_clients = st.sampled_from((1, 2, 3, 1 << 40))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    ranges=st.lists(st.tuples(_clients, st.integers(0, 300), st.integers(1, 40)), max_size=30),
    state=st.dictionaries(_clients, st.integers(1, 400)),
)
def test_folding_a_delete_set_into_a_state_keeps_what_lies_beyond_it(
    ranges: list[tuple[int, int, int]], state: dict[int, int]
) -> None:
    folded = merge_updates(_delete_set_update(ranges), codec.deleting_all_of(state))
    assert _beyond(codec.delete_set(folded) or [], state) == _beyond(ranges, state)


def test_a_long_history_of_deletions_is_read_whole() -> None:
    """A peer's sync step 2 carries its whole delete set: accepted when the board has every
    deleted item, refused when one range of it is beyond the board, however far in."""
    board, alice = Board(), Peer()
    for i in range(300):
        board.send(alice.write(_create(f"a{i}")))
    for i in range(0, 300, 2):
        board.send(alice.write(lambda doc, i=i: _todo(doc).pop(f"a{i}")))
    history = alice.doc.get_update()
    assert len(get_update(history, alice.doc.get_state())) > 256  # a long delete set
    board.send(history)
    ghost = Peer()
    ghost.learn(history)
    ghost.learn(Peer().write(_create("unknown")))  # a write the board never had
    deletion = ghost.write(lambda doc: _todo(doc).pop("unknown"))
    refused = board.refuses(merge_updates(history, deletion))
    assert "deletes" in refused.reason
