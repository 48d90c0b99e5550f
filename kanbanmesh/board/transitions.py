"""Columns and the legal moves between them: who may move a task from where to where."""

from __future__ import annotations

from enum import Enum

from kanbanmesh.board import constants as c
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.errors import IllegalMoveError


class Column(str, Enum):
    """The four root maps of a board, in the order a task travels."""

    TODO = c.TODO  # created by a client, waiting for a worker
    PREPARED = c.PREPARED  # assigned to a worker by the broker, not started yet
    DOING = c.DOING  # the assigned worker is generating into `output`
    DONE = c.DONE  # finished with a `status`; the end of the line


# Who writes each move (see the table in docs/protocol.md).
LEGAL_MOVES: dict[tuple[Column, Column], frozenset[PeerRole]] = {
    (Column.TODO, Column.PREPARED): frozenset({PeerRole.BROKER}),
    (Column.PREPARED, Column.DOING): frozenset({PeerRole.WORKER}),
    (Column.DOING, Column.DONE): frozenset({PeerRole.WORKER, PeerRole.BROKER}),
    # requeue after a worker is gone or its lease ran out
    (Column.PREPARED, Column.TODO): frozenset({PeerRole.BROKER}),
    (Column.DOING, Column.TODO): frozenset({PeerRole.BROKER}),
    # cancelled before start, or failed after max attempts
    (Column.TODO, Column.DONE): frozenset({PeerRole.BROKER}),
    # the broker as above; a worker whose answer was complete before its start was sent
    # (peers would have seen both moves in one message anyway: see worker/service.py)
    (Column.PREPARED, Column.DONE): frozenset({PeerRole.BROKER, PeerRole.WORKER}),
}


def check_move(src: Column, dst: Column, writer: PeerRole) -> None:
    """Raise `IllegalMoveError` unless `writer` may move a task from `src` to `dst`."""
    allowed = LEGAL_MOVES.get((src, dst))
    if allowed is None:
        raise IllegalMoveError(f"no task ever moves from {src.value} to {dst.value}")
    if writer not in allowed:
        raise IllegalMoveError(
            f"a {writer.value} may not move a task from {src.value} to {dst.value}"
        )


def winner(candidates: list[tuple[Column, int]]) -> tuple[Column, int]:
    """The copy that wins when a task sits in several columns after concurrent moves.

    `done` wins; among the rest the highest attempt; a tie goes to the later column.
    """
    order = list(Column)
    return max(candidates, key=lambda ca: (ca[0] is Column.DONE, ca[1], order.index(ca[0])))
