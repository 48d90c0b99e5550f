"""Invalid entries found on a board the server did not check: failed, not served.

Every update a peer sends is checked before it reaches the board, but a board loaded from disk
may hold entries no check ever saw: written by an older version, under other limits, or by
hand. Each such entry is replaced, before anybody connects, by a small failed entry in `done`
(`error.code` `invalid_task`) that copies none of the bad values, so that no reader of the board
(broker, workers, HTTP routes, archive, the board page) ever meets one, and the owner learns
what became of the task. An entry whose key is not even a task id is deleted.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.board.invalid import invalid_entry, is_task_id
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.board.reads import read_entry, read_items, shared_fields
from kanbanmesh.board.transitions import Column
from kanbanmesh.server.validation import UpdateRefused, check_entry

log = logging.getLogger(__name__)



def entry_problem(column: Column, key: str, fields: Any, limits: EntryLimits, shared: list[str]) -> str | None:
    """Why the entry under `key` (as `read_entry` read it) is not one a peer could have written,
    or None."""
    try:
        check_entry(column.value, key, fields, limits)
    except UpdateRefused as exc:
        return exc.reason
    if shared and shared != [c.F_OUTPUT]:
        return f"invalid task: {column.value}[{key[:24]!r}]: only `output` may be a shared type"
    return None


def fail_invalid_entries(board: BoardDoc, limits: EntryLimits) -> list[str]:
    """Replace every invalid entry of `board` by a failed one in `done` (see the module
    docstring); returns the keys it replaced or deleted."""
    replaced: list[str] = []
    with board.doc.transaction():
        for column in Column:
            ymap = board.column_map(column)
            for key, _ in read_items(ymap):
                try:
                    problem = entry_problem(
                        column, key, read_entry(ymap, key), limits, shared_fields(ymap, key)
                    )
                except Exception as exc:  # noqa: BLE001 - what cannot even be checked is invalid too
                    problem = f"invalid task: the entry cannot be read ({type(exc).__name__})"
                if problem is None:
                    continue
                log.warning("board entry %s[%r] is invalid and is failed: %s", column.value, key[:64], problem)
                owner = _safe_owner(ymap, key)
                created_at = _safe_created_at(ymap, key)
                del ymap[key]
                replaced.append(key)
                if is_task_id(key):
                    done = board.column_map(Column.DONE)
                    if key in done:
                        del done[key]
                    board.put_fields(Column.DONE, key, invalid_entry(key, owner, created_at, problem))
    return replaced


def _safe_owner(ymap: Any, key: str) -> str:
    try:
        owner = ymap[key].get(c.F_OWNER)
    except Exception:  # noqa: BLE001 - an entry that cannot be read has no owner to keep
        return ""
    return owner if isinstance(owner, str) and len(owner) <= 200 else ""


def _safe_created_at(ymap: Any, key: str) -> float:
    try:
        created = ymap[key].get(c.F_CREATED_AT)
    except Exception:  # noqa: BLE001 - nor a creation time
        return 0.0
    if isinstance(created, int | float) and not isinstance(created, bool) and math.isfinite(created):
        return float(created) if 0 <= created < 1e15 else 0.0
    return 0.0
