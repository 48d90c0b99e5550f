"""The broker's repairs of the board: requeue or fail a lost attempt, finish, drop duplicates.

Each is one call on a `BoardDoc`, made inside the pass's transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pycrdt import Map, Text

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.schema import AttemptRecord, TaskStatus
from kanbanmesh.board.transitions import Column, Writer, winner

log = logging.getLogger(__name__)

# What a requeued task leaves behind of its lost attempt (its history goes to `attempts`).
_ATTEMPT_FIELDS = frozenset({c.F_WORKER, c.F_ASSIGNED_AT, c.F_STARTED_AT, c.F_TOKENS, c.F_OUTPUT})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3  # default for tasks that do not set `max_attempts`
    backoff_s: float = 1.0  # wait before attempt 2; doubles for each later attempt
    backoff_max_s: float = 30.0

    def delay_s(self, next_attempt: int) -> float:
        return float(min(self.backoff_s * 2 ** max(0, next_attempt - 2), self.backoff_max_s))


def requeue_or_fail(
    board: BoardDoc, task_id: str, column: Column, entry: Map[Any], reason: str, message: str,
    policy: RetryPolicy,
) -> TaskStatus | None:
    """A task whose attempt was lost: back to `todo` for another attempt after a backoff,
    or to `done` (`cancelled` if asked, `failed` once its attempts are spent).

    Returns the status it was finished with, or None when it was requeued.
    """
    attempt = int(as_number(entry.get(c.F_ATTEMPT)) or 1)
    limit = int(as_number(entry.get(c.F_MAX_ATTEMPTS)) or policy.max_attempts)
    history = list(entry.get(c.F_ATTEMPTS) or [])
    history.append(
        AttemptRecord(
            attempt=attempt, worker=str(entry.get(c.F_WORKER) or ""), reason=reason,
            message=message, at=now_ms(),
        ).model_dump()
    )
    if entry.get(c.F_CANCEL):
        finish(board, task_id, column, TaskStatus.CANCELLED, None, {c.F_ATTEMPTS: history})
        return TaskStatus.CANCELLED
    if attempt >= limit:
        error = {"code": reason, "message": f"{message} (attempt {attempt} of {limit})"}
        finish(board, task_id, column, TaskStatus.FAILED, error, {c.F_ATTEMPTS: history})
        return TaskStatus.FAILED
    log.info("requeue %s after attempt %d: %s", task_id, attempt, message)
    board.move(
        task_id, column, Column.TODO, Writer.BROKER,
        set_fields={
            c.F_ATTEMPT: attempt + 1,
            c.F_ATTEMPTS: history,
            c.F_RETRY_AT: now_ms() + 1000.0 * policy.delay_s(attempt + 1),
        },
        drop_fields=_ATTEMPT_FIELDS,
        keep_output=False,
    )
    return None


def finish(
    board: BoardDoc, task_id: str, column: Column, status: TaskStatus,
    error: dict[str, str] | None, extra: dict[str, Any] | None = None,
) -> None:
    """Move a task to `done` with `status`. The text streamed so far stays the result: a
    cancelled or failed task keeps what its (last) worker wrote, as when the worker finishes."""
    output = board.column_map(column)[task_id].get(c.F_OUTPUT)
    fields: dict[str, Any] = {
        c.F_STATUS: status.value,
        c.F_FINISHED_AT: now_ms(),
        c.F_RESULT: str(output) if isinstance(output, Text) else "",
        **(extra or {}),
    }
    if error is not None:
        fields[c.F_ERROR] = error
    # A task cancelled while the server's middlewares enriched it: the marker means nothing in done.
    board.move(task_id, column, Column.DONE, Writer.BROKER, set_fields=fields,
               drop_fields=frozenset({c.F_ENRICHING}))


def drop_duplicates(board: BoardDoc, task_id: str) -> list[Column]:
    """Keep only the winning copy of a task found in several columns (concurrent moves:
    `done` wins, then the highest attempt); returns the columns whose copies were deleted."""
    copies = [
        (column, int(as_number(board.column_map(column)[task_id].get(c.F_ATTEMPT))))
        for column in Column
        if task_id in board.column_map(column)
    ]
    if len(copies) < 2:
        return []
    kept = winner(copies)[0]
    dropped = [column for column, _ in copies if column is not kept]
    for column in dropped:
        board.delete(task_id, column)
    log.info("task %s was in %s; kept the copy in %s", task_id, [c.value for c, _ in copies], kept.value)
    return dropped


def as_number(value: object) -> float:
    """A field read off the board as a number (0 for anything that is not one)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
