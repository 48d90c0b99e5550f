"""The broker's repairs of the board: requeue or fail a lost attempt, finish, drop duplicates,
fail an invalid entry.

Each is one call on a `BoardDoc`, made inside the pass's transaction, which does not roll back:
so each reads and checks everything it needs before its first write (`broker.entries`), and
what it is handed has been checked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pycrdt import Map, Text

from broker.entries import broker_fields
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, entry_from_map, now_ms
from kanbanmesh.board.invalid import invalid_entry, is_task_id
from kanbanmesh.board.reads import read_field
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import AttemptRecord, TaskEntry, TaskStatus
from kanbanmesh.board.transitions import Column, winner
from kanbanmesh.errors import InvalidTaskError

log = logging.getLogger(__name__)

# What a requeued task leaves behind of its lost attempt (its history goes to `attempts`).
_ATTEMPT_FIELDS = frozenset({c.F_WORKER, c.F_ASSIGNED_AT, c.F_STARTED_AT, c.F_TOKENS, c.F_OUTPUT})

# An attempt that was never started is nobody's failure but its worker's: a start timeout does
# not count against `max_attempts` (see `spent_attempts`).
START_TIMEOUT = "start_timeout"
# Start timeouts recorded in `attempts` (the latest); older ones are dropped, so that workers
# grabbing a task again and again cannot grow its entry without end.
MAX_START_TIMEOUT_RECORDS = 10


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3  # default for tasks that do not set `max_attempts`
    backoff_s: float = 1.0  # wait before attempt 2; doubles for each later attempt
    backoff_max_s: float = 30.0

    def delay_s(self, next_attempt: int) -> float:
        return float(min(self.backoff_s * 2 ** min(max(0, next_attempt - 2), 62), self.backoff_max_s))


def spent_attempts(history: list[dict[str, Any]]) -> int:
    """The attempts that count against `max_attempts`: every lost attempt recorded, but those
    whose worker never started them (`start_timeout`)."""
    return sum(1 for record in history if record.get("reason") != START_TIMEOUT)


def requeue_or_fail(
    board: BoardDoc, task_id: str, column: Column, entry: TaskEntry | Map[Any], reason: str,
    message: str, policy: RetryPolicy,
) -> TaskStatus | None:
    """A task whose attempt was lost (`entry`: its checked fields, or its live Y.Map, then
    checked here, raising `InvalidTaskError`): back to `todo` for another attempt, after a
    backoff unless it was never started, or to `done` (`cancelled` if asked, `failed` once its
    attempts are spent; a start timeout never fails a task).

    Returns the status it was finished with, or None when it was requeued.
    """
    if isinstance(entry, Map):
        entry = entry_from_map(entry)
    attempt = entry.attempt or 1
    limit = entry.max_attempts or policy.max_attempts
    history = [record.model_dump() for record in entry.attempts]
    history.append(
        AttemptRecord(
            attempt=attempt, worker=entry.worker or "", reason=reason, message=message, at=now_ms(),
        ).model_dump()
    )
    if entry.cancel:
        finish(board, task_id, column, TaskStatus.CANCELLED, None, {c.F_ATTEMPTS: history}, output=entry.output)
        return TaskStatus.CANCELLED
    spent = spent_attempts(history)
    if reason != START_TIMEOUT and spent >= limit:
        error = {"code": reason, "message": f"{message} ({spent} of {limit} attempts lost)"}
        finish(board, task_id, column, TaskStatus.FAILED, error, {c.F_ATTEMPTS: history}, output=entry.output)
        return TaskStatus.FAILED
    # A task nobody started waits for no backoff: its next worker is someone else (the one
    # that timed out is in backoff itself, see `broker.health`).
    retry_at = now_ms() if reason == START_TIMEOUT else now_ms() + 1000.0 * policy.delay_s(spent + 1)
    log.info("requeue %s after attempt %d: %s", task_id, attempt, message)
    board.move(
        task_id, column, Column.TODO, PeerRole.BROKER,
        set_fields={
            c.F_ATTEMPT: attempt + 1,
            c.F_ATTEMPTS: _bounded(history),
            c.F_RETRY_AT: retry_at,
        },
        drop_fields=_ATTEMPT_FIELDS,
        keep_output=False,
    )
    return None


def _bounded(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    timeouts = [i for i, record in enumerate(history) if record.get("reason") == START_TIMEOUT]
    if len(timeouts) <= MAX_START_TIMEOUT_RECORDS:
        return history
    dropped = set(timeouts[:-MAX_START_TIMEOUT_RECORDS])
    return [record for i, record in enumerate(history) if i not in dropped]


def finish(
    board: BoardDoc, task_id: str, column: Column, status: TaskStatus,
    error: dict[str, str] | None, extra: dict[str, Any] | None = None, *, output: str | None = None,
) -> None:
    """Move a task to `done` with `status`. The text streamed so far (`output`, as checked;
    read off the entry when not given) stays the result: a cancelled or failed task keeps what
    its (last) worker wrote, as when the worker finishes."""
    if output is None:
        entry = read_field(board.column_map(column), task_id)
        text = read_field(entry, c.F_OUTPUT) if isinstance(entry, Map) else None
        output = str(text) if isinstance(text, Text) else ""
    fields: dict[str, Any] = {
        c.F_STATUS: status.value,
        c.F_FINISHED_AT: now_ms(),
        c.F_RESULT: output,
        **(extra or {}),
    }
    if error is not None:
        fields[c.F_ERROR] = error
    # A task cancelled while the server's middlewares enriched it: the marker means nothing in done.
    board.move(task_id, column, Column.DONE, PeerRole.BROKER, set_fields=fields,
               drop_fields=frozenset({c.F_ENRICHING}))


def drop_duplicates(board: BoardDoc, task_id: str) -> list[Column]:
    """Keep only the winning copy of a task found in several columns (concurrent moves:
    `done` wins, then the highest attempt); returns the columns whose copies were deleted.
    A copy that is no entry, or whose attempt is not one, ranks below every valid one."""
    copies = [(column, _attempt_of(board, column, task_id)) for column in Column
              if task_id in board.column_map(column)]
    if len(copies) < 2:
        return []
    kept = winner(copies)[0]
    dropped = [column for column, _ in copies if column is not kept]
    for column in dropped:
        board.delete(task_id, column)
    log.info("task %s was in %s; kept the copy in %s", task_id, [c.value for c, _ in copies], kept.value)
    return dropped


def _attempt_of(board: BoardDoc, column: Column, task_id: str) -> int:
    entry = read_field(board.column_map(column), task_id)
    if not isinstance(entry, Map):
        return -1
    try:
        return broker_fields({c.F_ATTEMPT: read_field(entry, c.F_ATTEMPT, 0)}).attempt
    except InvalidTaskError:
        return -1


def fail_invalid(board: BoardDoc, task_id: str, message: str) -> bool:
    """Fail a task whose entry the broker cannot act on: its copies in `todo`, `prepared` and
    `doing` are deleted, and unless `done` holds one already, a small failed entry takes their
    place (`kanbanmesh.board.invalid.invalid_entry`). A key that is no task id is only deleted. Reads
    nothing but the owner and creation time, each on its own; returns whether it wrote."""
    owner: object = None
    created_at: object = None
    wrote = False
    for column in (Column.TODO, Column.PREPARED, Column.DOING):
        ymap = board.column_map(column)
        if task_id not in ymap:
            continue
        entry = read_field(ymap, task_id)
        if isinstance(entry, Map):
            owner = owner if isinstance(owner, str) else read_field(entry, c.F_OWNER)
            created_at = created_at if created_at is not None else read_field(entry, c.F_CREATED_AT)
        elif isinstance(entry, dict):  # a plain JSON object where a Y.Map belongs
            owner, created_at = entry.get(c.F_OWNER), entry.get(c.F_CREATED_AT)
        del ymap[task_id]
        wrote = True
    done = board.column_map(Column.DONE)
    if is_task_id(task_id) and task_id not in done:
        done[task_id] = Map(invalid_entry(task_id, owner, created_at, message))
        wrote = True
    if wrote:
        log.warning("task %s failed: %s", task_id[:64], message)
    return wrote
