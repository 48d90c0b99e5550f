"""Board generations: a fresh document with only the live tasks, to shed the tombstones.

Deleting an entry from a Y.Map leaves a tombstone (~85 bytes per task, measured) that every
new client downloads forever. So once enough finished tasks have left a board, the server
starts a new generation of its document: a new `Y.Doc` holding a copy of every entry still
on the board, written by a fresh client id, with `meta.generation` incremented. Peers of the
old generation are closed with 4409 and must reconnect with a new, empty `Y.Doc` (the Python
peer does so by itself; see docs/protocol.md for JavaScript). A peer that comes back with a
replica of an old generation (its state vector names a client id of an old generation) is
closed with 4409 again.

Tasks in `prepared` or `doing` cannot carry their worker's in-flight state into a new
document, so the copy puts them back in `todo` for another attempt (reason `board_rotated`);
the server rotates only when those columns are empty, unless tombstones pile up under
constant load (`RoomDocument.rotation_due` in `kanbanmesh.server.lifecycle`).
"""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, Map, Text

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.reads import plain_fields
from kanbanmesh.board.schema import AttemptRecord
from kanbanmesh.board.transitions import Column

# What a task put back in `todo` leaves behind of its interrupted attempt.
_ATTEMPT_FIELDS = (c.F_WORKER, c.F_ASSIGNED_AT, c.F_STARTED_AT, c.F_TOKENS, c.F_OUTPUT)


def generation_of(doc: Doc[Any]) -> int:
    value = doc.get(c.META, type=Map).get(c.M_GENERATION)
    return int(value) if isinstance(value, int | float) else 0


def next_generation(board: BoardDoc, default_max_attempts: int) -> Doc[Any]:
    """A new document with a copy of every entry of `board`, one generation later."""
    fresh: Doc[Any] = Doc()
    target = BoardDoc(fresh)
    with fresh.transaction():
        meta = fresh.get(c.META, type=Map)
        meta[c.M_GENERATION] = generation_of(board.doc) + 1
        limits = board.doc.get(c.META, type=Map).get(c.M_LIMITS)
        if isinstance(limits, dict):
            meta[c.M_LIMITS] = limits
        for column in Column:
            for task_id, entry in board.entries(column):
                fields = plain_fields(entry)
                if column in (Column.PREPARED, Column.DOING):
                    target.column_map(Column.TODO)[task_id] = Map(_interrupted(fields, default_max_attempts))
                    continue
                output = fields.pop(c.F_OUTPUT, None)
                if output is not None:
                    fields[c.F_OUTPUT] = Text(str(output))
                target.column_map(column)[task_id] = Map(fields)
    return fresh


def _interrupted(fields: dict[str, Any], default_max_attempts: int) -> dict[str, Any]:
    attempt = int(fields.get(c.F_ATTEMPT) or 1)
    history = list(fields.get(c.F_ATTEMPTS) or [])
    history.append(
        AttemptRecord(
            attempt=attempt, worker=str(fields.get(c.F_WORKER) or ""), reason="board_rotated",
            message="the board moved to a new generation while the task ran", at=now_ms(),
        ).model_dump()
    )
    kept = {k: v for k, v in fields.items() if k not in _ATTEMPT_FIELDS}
    kept[c.F_ATTEMPT] = attempt + 1
    kept[c.F_ATTEMPTS] = history
    # One more attempt allowed: a rotation is nobody's failure.
    kept[c.F_MAX_ATTEMPTS] = int(fields.get(c.F_MAX_ATTEMPTS) or default_max_attempts) + 1
    return kept
