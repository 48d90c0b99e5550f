"""The broker: assigns queued tasks to workers and repairs the board when workers vanish."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus as StartStatus
from pycrdt import Map, MapEvent, Text

import kanbanmesh
from awareness.states import Role, WorkerPresence, workers_from_states
from broker.scheduler import QueuedTask, TodoQueue, plan
from broker.view import BoardView
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.events import event_keys, event_path
from kanbanmesh.board.schema import TaskStatus
from kanbanmesh.board.transitions import Column, Writer
from kanbanmesh.notify import ChangeSignal

log = logging.getLogger(__name__)

_BROKER_FIELDS_ON_REQUEUE = frozenset(
    {c.F_WORKER, c.F_ASSIGNED_AT, c.F_STARTED_AT, c.F_TOKENS, c.F_OUTPUT}
)


@dataclass(frozen=True)
class BrokerSettings:
    max_attempts: int = 3  # attempts before a task whose workers keep vanishing fails
    orphan_grace_s: float = 5.0  # after start, how long workers unknown to us may reconnect
    renew_s: float = 10.0  # awareness renewal (peers drop states older than 30 s)
    name: str = "broker"


@dataclass
class BrokerStats:
    assigned: int = 0
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    passes: int = 0


@dataclass
class _Tracking:
    queue: TodoQueue = field(default_factory=TodoQueue)
    cancel_requests: set[str] = field(default_factory=set)  # in `todo`
    prepared_cancels: set[str] = field(default_factory=set)
    seen_workers: set[str] = field(default_factory=set)
    # Who holds each task in `prepared` and `doing`, kept by observers so that a pass
    # reads no entry unless something is to be done with it.
    held: dict[Column, dict[str, str]] = field(
        default_factory=lambda: {Column.PREPARED: {}, Column.DOING: {}}
    )


class Broker:
    """Runs assignment and repair passes on one board whenever it changes."""

    def __init__(self, view: BoardView, settings: BrokerSettings) -> None:
        self._view = view
        self._settings = settings
        self.id = f"broker-{uuid.uuid4().hex[:12]}"
        self.stats = BrokerStats()
        self._track = _Tracking()
        self._started_at = 0.0
        self._running = False
        self._workers: list[WorkerPresence] | None = None  # parsed presence, until it changes
        self._presence_changed = ChangeSignal()
        view.on_remote_change(self._after_remote_change)
        view.on_presence_change(self._forget_workers)

    @property
    def board(self) -> BoardDoc:
        return self._view.board

    async def run(self, *, task_status: StartStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the board until cancelled."""
        todo = self.board.column_map(Column.TODO)
        prepared = self.board.column_map(Column.PREPARED)
        doing = self.board.column_map(Column.DOING)
        subs = [
            (todo, todo.observe_deep(self._on_todo_events)),
            (prepared, prepared.observe_deep(self._on_prepared_events)),
            # Shallow: `doing` entries change with every streamed chunk.
            (doing, doing.observe(self._on_doing_event)),
        ]
        try:
            self._rebuild()
            self._started_at = anyio.current_time()
            self._running = True
            last_renew = -1e9
            task_status.started()
            while True:
                now = anyio.current_time()
                if now - last_renew >= self._settings.renew_s:
                    self._view.publish(self._presence())
                    last_renew = now
                self.run_pass()
                # Document changes run their pass as they arrive (`_after_remote_change`);
                # this loop covers presence changes, and time (grace periods) once a second.
                with anyio.move_on_after(1.0):
                    await self._presence_changed.wait()
        finally:
            self._running = False
            for ymap, sub in subs:
                ymap.unobserve(sub)

    def _after_remote_change(self) -> None:
        # A pass right away, before the change is fanned out: a new task and its assignment
        # then reach every peer in one message instead of two.
        if not self._running:
            return
        try:
            self.run_pass()
        except Exception:  # the loop in run() retries on the next change or tick
            log.exception("broker pass failed")

    def _forget_workers(self) -> None:
        self._workers = None
        self._presence_changed.notify()

    def _presence(self) -> dict[str, Any]:
        return {
            c.A_ROLE: Role.BROKER.value,
            c.A_ID: self.id,
            c.A_NAME: self._settings.name,
            c.A_VERSION: kanbanmesh.__version__,
        }

    # -- keeping the queue in step with `todo` ----------------------------------------------

    def _rebuild(self) -> None:
        self._track.queue.clear()
        for task_id, entry in self.board.entries(Column.TODO):
            self._enqueue(task_id, entry)
        for column, held in self._track.held.items():
            held.clear()
            for task_id, entry in self.board.entries(column):
                self._hold(column, task_id, entry)
                if column is Column.PREPARED and isinstance(entry, Map) and entry.get(c.F_CANCEL):
                    self._track.prepared_cancels.add(task_id)

    def _hold(self, column: Column, task_id: str, entry: Any) -> None:
        if isinstance(entry, Map):
            self._track.held[column][task_id] = str(entry.get(c.F_WORKER) or "")

    def _on_prepared_events(self, events: list[Any]) -> None:
        roots, cancels = _column_changes(events)
        for event in roots:
            self._on_held_keys(Column.PREPARED, event)
        self._track.prepared_cancels.update(cancels)

    def _on_doing_event(self, event: MapEvent) -> None:
        self._on_held_keys(Column.DOING, event)

    def _on_held_keys(self, column: Column, event: MapEvent) -> None:
        for key, change in event_keys(event).items():
            if change.get("action") == "delete":
                self._track.held[column].pop(key, None)
            else:
                self._hold(column, key, change.get("newValue"))

    def _enqueue(self, task_id: str, entry: Any) -> None:
        if not isinstance(entry, Map):
            return
        if entry.get(c.F_CANCEL):
            self._track.cancel_requests.add(task_id)
        # A task without `created_at` (a JavaScript client may leave it out) is as old as
        # its arrival here, not older than every other task; it is stamped when assigned.
        created_at = _number(entry.get(c.F_CREATED_AT)) or now_ms()
        self._track.queue.add(
            QueuedTask.make(
                task_id, str(entry.get(c.F_MODEL) or ""), _number(entry.get(c.F_PRIORITY)), created_at
            )
        )

    def _on_todo_events(self, events: list[Any]) -> None:
        roots, cancels = _column_changes(events)
        for event in roots:
            for key, change in event_keys(event).items():
                if change.get("action") == "delete":
                    self._track.queue.discard(key)
                else:
                    self._enqueue(key, change.get("newValue"))
        self._track.cancel_requests.update(cancels)

    # -- one pass ------------------------------------------------------------------------

    def run_pass(self) -> None:
        """Requeue orphans, cancel what was cancelled, assign what can be assigned."""
        self.stats.passes += 1
        if self._workers is None:
            self._workers = workers_from_states(self._view.presence())
        workers = self._workers
        present = {w.id for w in workers}
        self._track.seen_workers |= present
        with self.board.doc.transaction():
            load = self._repair(present)
            self._cancel_queued()
            self._assign(workers, load)

    def _repair(self, present: set[str]) -> dict[str, int]:
        load: dict[str, int] = {}
        in_grace = anyio.current_time() - self._started_at < self._settings.orphan_grace_s
        for column, held in self._track.held.items():
            for task_id, worker in list(held.items()):
                if worker in present:
                    load[worker] = load.get(worker, 0) + 1
                    continue
                if in_grace and worker not in self._track.seen_workers:
                    continue  # it may be reconnecting after a server restart
                entry = self.board.column_map(column).get(task_id)
                if isinstance(entry, Map):
                    self._requeue(task_id, column, entry)
        prepared = self.board.column_map(Column.PREPARED)
        for task_id in list(self._track.prepared_cancels):
            self._track.prepared_cancels.discard(task_id)
            entry = prepared.get(task_id)
            if isinstance(entry, Map) and entry.get(c.F_CANCEL):
                self._finish(task_id, Column.PREPARED, TaskStatus.CANCELLED, None)
        return load

    def _requeue(self, task_id: str, column: Column, entry: Map[Any]) -> None:
        attempt = int(_number(entry.get(c.F_ATTEMPT)) or 1)
        if entry.get(c.F_CANCEL):
            self._finish(task_id, column, TaskStatus.CANCELLED, None)
        elif attempt >= self._settings.max_attempts:
            self._finish(
                task_id,
                column,
                TaskStatus.FAILED,
                {
                    "code": "worker_lost",
                    "message": f"the worker was lost on each of {attempt} attempts",
                },
            )
        else:
            log.info("requeue %s (attempt %d, worker gone)", task_id, attempt)
            self.board.move(
                task_id,
                column,
                Column.TODO,
                Writer.BROKER,
                set_fields={c.F_ATTEMPT: attempt + 1},
                drop_fields=_BROKER_FIELDS_ON_REQUEUE,
                keep_output=False,
            )
            self.stats.requeued += 1

    def _finish(
        self, task_id: str, column: Column, status: TaskStatus, error: dict[str, str] | None
    ) -> None:
        # The text streamed so far stays the result: a cancelled or failed task keeps what
        # its (last) worker wrote, as it does when the worker itself finishes it.
        output = self.board.column_map(column)[task_id].get(c.F_OUTPUT)
        fields: dict[str, Any] = {
            c.F_STATUS: status.value,
            c.F_FINISHED_AT: now_ms(),
            c.F_RESULT: str(output) if isinstance(output, Text) else "",
        }
        if error is not None:
            fields[c.F_ERROR] = error
        if status is TaskStatus.CANCELLED:
            self.stats.cancelled += 1
        else:
            self.stats.failed += 1
        self.board.move(task_id, column, Column.DONE, Writer.BROKER, set_fields=fields)

    def _cancel_queued(self) -> None:
        todo = self.board.column_map(Column.TODO)
        for task_id in list(self._track.cancel_requests):
            self._track.cancel_requests.discard(task_id)
            entry = todo.get(task_id)
            if isinstance(entry, Map) and entry.get(c.F_CANCEL):
                self._finish(task_id, Column.TODO, TaskStatus.CANCELLED, None)

    def _assign(self, workers: list[WorkerPresence], load: dict[str, int]) -> None:
        todo = self.board.column_map(Column.TODO)
        for task_id, worker_id in plan(self._track.queue, workers, load):
            entry = todo.get(task_id)
            if not isinstance(entry, Map):
                self._track.queue.discard(task_id)
                continue
            assignment: dict[str, Any] = {
                c.F_WORKER: worker_id,
                c.F_ATTEMPT: int(_number(entry.get(c.F_ATTEMPT)) or 1),
                c.F_ASSIGNED_AT: now_ms(),
            }
            queued = self._track.queue.get(task_id)
            if not _number(entry.get(c.F_CREATED_AT)) and queued is not None:
                assignment[c.F_CREATED_AT] = queued.created_at
            self.board.move(task_id, Column.TODO, Column.PREPARED, Writer.BROKER, set_fields=assignment)
            self.stats.assigned += 1


def _column_changes(events: list[Any]) -> tuple[list[MapEvent], list[str]]:
    """A column's deep events: those on the column itself (entries added or removed), and
    the ids of entries whose `cancel` flag was written."""
    roots: list[MapEvent] = []
    cancels: list[str] = []
    for event in events:
        if not isinstance(event, MapEvent):
            continue
        path = event_path(event)
        if not path:
            roots.append(event)
        elif len(path) == 1 and c.F_CANCEL in event_keys(event):
            cancels.append(str(path[0]))
    return roots, cancels


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
