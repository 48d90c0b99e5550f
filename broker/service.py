"""The broker: assigns queued tasks to workers and repairs the board when workers vanish.

One pass, in one transaction: drop the losing copies of tasks found in several columns,
requeue (or fail) the tasks of workers that are gone or whose lease ran out, finish
cancelled tasks that no worker runs, then assign queued tasks to workers with free slots.
A pass runs right after each change another peer makes (before that change is fanned out),
after each presence change, and once a second. Of several brokers on a board only the
leader (see `broker.election`) makes passes; the others keep their indexes and stand by.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus as StartStatus
from pycrdt import Map

import kanbanmesh
from awareness.states import Role, WorkerPresence, workers_from_states
from broker.election import leader_id
from broker.repair import RetryPolicy, as_number, drop_duplicates, finish, requeue_or_fail
from broker.scheduler import free_slots, plan
from broker.tracker import BoardTracker
from broker.view import BoardView
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.reads import read_field
from kanbanmesh.board.schema import TaskStatus
from kanbanmesh.board.transitions import Column, Writer
from kanbanmesh.notify import ChangeSignal
from kanbanmesh.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerSettings:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # A worker that has not renewed its awareness for this long has lost its tasks.
    lease_s: float = 30.0
    orphan_grace_s: float = 5.0  # after start, how long workers unknown to us may reconnect
    renew_s: float = 10.0  # awareness renewal (peers drop states older than 30 s)
    name: str = "broker"

    @classmethod
    def from_settings(cls, settings: Settings, name: str) -> BrokerSettings:
        return cls(
            retry=RetryPolicy(max_attempts=settings.max_attempts, backoff_s=settings.retry_backoff_s),
            lease_s=settings.lease_s,
            orphan_grace_s=settings.orphan_grace_s,
            name=name,
        )


@dataclass
class BrokerStats:
    assigned: int = 0
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    deduplicated: int = 0
    passes: int = 0


class Broker:
    """Runs assignment and repair passes on one board whenever it changes."""

    def __init__(self, view: BoardView, settings: BrokerSettings) -> None:
        self._view = view
        self._settings = settings
        self.id = f"broker-{uuid.uuid4().hex[:12]}"
        self.since = time.time() * 1000.0
        self.stats = BrokerStats()
        self._tracker = BoardTracker(view.board)
        self._started_at = 0.0
        self._running = False
        self._leading = False
        self._seen_workers: set[str] = set()
        self._workers: list[WorkerPresence] | None = None  # parsed presence, until it changes
        # The last pass left no worker a free slot: until a task leaves `prepared`/`doing` or
        # presence changes, a pass after a document change could assign nothing.
        self._saturated = False
        self._presence_changed = ChangeSignal()
        view.on_remote_change(self._after_remote_change)
        view.on_presence_change(self._forget_workers)
        view.on_reset(self._reset)

    @property
    def board(self) -> BoardDoc:
        return self._view.board

    @property
    def leading(self) -> bool:
        """Whether this broker led the board at its last pass."""
        return self._leading

    async def run(self, *, task_status: StartStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the board until cancelled."""
        self._tracker.attach()
        try:
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
                # this loop covers presence changes, and time (leases, retry backoffs).
                with anyio.move_on_after(self._next_wake_s()):
                    await self._presence_changed.wait()
        finally:
            self._running = False
            self._tracker.detach()

    def _next_wake_s(self) -> float:
        due = self._tracker.queue.next_retry(now_ms())
        wait = 1.0 if due is None else (due - now_ms()) / 1000.0
        return min(1.0, self._settings.lease_s / 4, max(0.01, wait))

    def _after_remote_change(self) -> None:
        # A pass right away, before the change is fanned out: a new task and its assignment
        # then reach every peer in one message instead of two. Only when the board changed in
        # a way a pass acts on (most updates are text streamed into `doing` entries) and
        # something waits for one: a task finishing with nothing queued needs no pass.
        if not self._running or not self._tracker.dirty or not self._tracker.waiting():
            return
        if self._saturated and not self._tracker.freed and not self._tracker.chores():
            return  # under load: a new task while every slot is taken
        try:
            self.run_pass()
        except Exception:  # the loop in run() retries on the next change or tick
            log.exception("broker pass failed")

    def _reset(self) -> None:
        # A new generation of the document: index it afresh.
        self._tracker.detach()
        self._tracker = BoardTracker(self._view.board)
        if self._running:
            self._tracker.attach()

    def _forget_workers(self) -> None:
        self._workers = None
        self._saturated = False
        self._presence_changed.notify()

    def _presence(self) -> dict[str, Any]:
        return {
            c.A_ROLE: Role.BROKER.value,
            c.A_ID: self.id,
            c.A_NAME: self._settings.name,
            c.A_SINCE: self.since,
            c.A_VERSION: kanbanmesh.__version__,
        }

    # -- one pass ------------------------------------------------------------------------

    def run_pass(self) -> None:
        """If leading: deduplicate, repair, cancel, assign, in one transaction."""
        presence = self._view.presence()
        self._leading = leader_id(self.id, self.since, presence.values()) == self.id
        if not self._leading:
            return
        self.stats.passes += 1
        if self._workers is None:
            self._workers = workers_from_states(presence)
        ages = self._view.presence_ages()
        stale = {
            str(state.get(c.A_ID))
            for cid, state in presence.items()
            if state.get(c.A_ROLE) == Role.WORKER.value and ages.get(cid, 0.0) >= self._settings.lease_s
        }
        alive = [w for w in self._workers if w.id not in stale]
        present = {w.id for w in alive}
        self._seen_workers |= present
        with self.board.doc.transaction():
            self._deduplicate()
            load = self._repair(present, stale)
            self._cancel_queued()
            free = sum(free_slots(alive, load).values())
            assigned = self._assign(alive, load)
        # After the commit: the pass's own moves fired the observers too, and need no pass.
        self._tracker.dirty = False
        self._tracker.freed = False
        self._saturated = assigned >= free

    def _deduplicate(self) -> None:
        suspects, self._tracker.suspects = self._tracker.duplicates(), set()
        for task_id in suspects:
            if drop_duplicates(self.board, task_id):
                self.stats.deduplicated += 1

    def _repair(self, present: set[str], stale: set[str]) -> dict[str, int]:
        load: dict[str, int] = {}
        in_grace = anyio.current_time() - self._started_at < self._settings.orphan_grace_s
        for column, held in self._tracker.held.items():
            for task_id, worker in list(held.items()):
                if worker in present:
                    load[worker] = load.get(worker, 0) + 1
                    continue
                if worker in stale:
                    reason = "lease_expired"
                    message = f"worker {worker} sent no heartbeat for {self._settings.lease_s:g} s"
                elif in_grace and worker not in self._seen_workers:
                    continue  # it may be reconnecting after a server restart
                else:
                    reason, message = "worker_lost", f"worker {worker} left the board"
                entry = read_field(self.board.column_map(column), task_id)
                if isinstance(entry, Map):
                    self._count(requeue_or_fail(
                        self.board, task_id, column, entry, reason, message, self._settings.retry
                    ))
        self._finish_cancelled(Column.PREPARED, self._tracker.prepared_cancels)
        return load

    def _count(self, outcome: TaskStatus | None) -> None:
        if outcome is None:
            self.stats.requeued += 1
        elif outcome is TaskStatus.CANCELLED:
            self.stats.cancelled += 1
        else:
            self.stats.failed += 1

    def _cancel_queued(self) -> None:
        self._finish_cancelled(Column.TODO, self._tracker.todo_cancels)

    def _finish_cancelled(self, column: Column, requests: set[str]) -> None:
        """Finish, cancelled, the tasks in `column` whose cancel flag was written (no worker
        runs them); `requests` is the tracker's set of such ids, emptied here."""
        entries = self.board.column_map(column)
        for task_id in list(requests):
            requests.discard(task_id)
            entry = read_field(entries, task_id)
            if isinstance(entry, Map) and read_field(entry, c.F_CANCEL):
                finish(self.board, task_id, column, TaskStatus.CANCELLED, None)
                self.stats.cancelled += 1

    def _assign(self, workers: list[WorkerPresence], load: dict[str, int]) -> int:
        """Assign what the plan says; returns how many tasks were assigned."""
        todo = self.board.column_map(Column.TODO)
        assigned = 0
        queue = self._tracker.queue
        for task_id, worker_id in plan(queue, workers, load, now_ms()):
            entry = read_field(todo, task_id)
            if not isinstance(entry, Map) or task_id in self._tracker.done or read_field(entry, c.F_ENRICHING):
                queue.discard(task_id)
                continue
            assignment: dict[str, Any] = {
                c.F_WORKER: worker_id,
                c.F_ATTEMPT: int(as_number(read_field(entry, c.F_ATTEMPT)) or 1),
                c.F_ASSIGNED_AT: now_ms(),
            }
            queued = queue.get(task_id)
            if not as_number(read_field(entry, c.F_CREATED_AT)) and queued is not None:
                assignment[c.F_CREATED_AT] = queued.created_at
            self.board.move(task_id, Column.TODO, Column.PREPARED, Writer.BROKER, set_fields=assignment)
            self.stats.assigned += 1
            assigned += 1
        return assigned
