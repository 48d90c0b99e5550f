"""Columns and the legal moves between them: who may move a task from where to where."""

from __future__ import annotations

from enum import Enum

from kanbanmesh.board import constants as c
from kanbanmesh.errors import IllegalMoveError


class Column(str, Enum):
    """The four root maps of a board, in the order a task travels."""

    TODO = c.TODO  # created by a client, waiting for a worker
    PREPARED = c.PREPARED  # assigned to a worker by the broker, not started yet
    DOING = c.DOING  # the assigned worker is generating into `output`
    DONE = c.DONE  # finished with a `status`; the end of the line


class Writer(str, Enum):
    """Who writes a transition (see the table in docs/protocol.md)."""

    CLIENT = "client"
    BROKER = "broker"
    WORKER = "worker"


LEGAL_MOVES: dict[tuple[Column, Column], frozenset[Writer]] = {
    (Column.TODO, Column.PREPARED): frozenset({Writer.BROKER}),
    (Column.PREPARED, Column.DOING): frozenset({Writer.WORKER}),
    (Column.DOING, Column.DONE): frozenset({Writer.WORKER, Writer.BROKER}),
    # requeue after a worker is gone or its lease ran out
    (Column.PREPARED, Column.TODO): frozenset({Writer.BROKER}),
    (Column.DOING, Column.TODO): frozenset({Writer.BROKER}),
    # cancelled before start, or failed after max attempts
    (Column.TODO, Column.DONE): frozenset({Writer.BROKER}),
    # the broker as above; a worker whose answer was complete before its start was sent
    # (peers would have seen both moves in one message anyway: see worker/service.py)
    (Column.PREPARED, Column.DONE): frozenset({Writer.BROKER, Writer.WORKER}),
}


def check_move(src: Column, dst: Column, writer: Writer) -> None:
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
