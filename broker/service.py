"""The broker: assigns queued tasks to workers and repairs the board when workers vanish.

One pass, in one transaction: drop the losing copies of tasks found in several columns, fail
the entries the broker cannot act on, requeue (or fail) the tasks of workers that are gone,
whose lease ran out, or that did not start a task within its start deadline, finish cancelled
tasks that no worker runs, then assign queued tasks to workers with free slots, as far as the
broker trusts them (`broker.health`: a worker that has not started a task yet holds at most
one unstarted task), preferring the worker whose prompt cache holds a task's earlier turns
(`broker.routing`). A pass runs right after each change another peer makes (before that
change is fanned out), after each presence change, and once a second. Of several brokers on a
board only the leader (see `broker.election`) makes passes; the others keep their indexes and
stand by.

Nothing on the board may stop the broker. The pass's transaction does not roll back, so each
task's operation reads and checks what it needs before it writes (`broker.entries`); one that
fails all the same fails its task (`invalid_task`) and the pass goes on; a pass that fails is
logged and made again later, after a pause that grows while passes keep failing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus as StartStatus
from pycrdt import Map

import kanbanmesh
from awareness.states import WorkerPresence, WorkerStates
from broker.election import leader_id
from broker.entries import broker_fields, checked_entry
from broker.health import HealthPolicy, Standing, WorkerHealth
from broker.repair import (
    START_TIMEOUT,
    RetryPolicy,
    drop_duplicates,
    fail_invalid,
    finish,
    requeue_or_fail,
)
from broker.routing import RoutingPolicy
from broker.scheduler import free_slots, plan
from broker.tracker import BoardTracker, read_fields
from broker.view import BoardView
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.board.reads import read_entry, read_field
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import TaskEntry, TaskStatus
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import InvalidTaskError
from kanbanmesh.notify import ChangeSignal
from kanbanmesh.peer import peer_id

log = logging.getLogger(__name__)

T = TypeVar("T")

# The longest pause after failed passes (it doubles from 0.1 s while passes keep failing).
_MAX_PAUSE_S = 5.0


@dataclass(frozen=True)
class BrokerSettings:
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # A worker that has not renewed its awareness for this long has lost its tasks.
    lease_s: float = 30.0
    # A task its worker has not started (moved out of `prepared`) this long after the broker
    # saw it assigned goes back to `todo`, and the worker into backoff (`health`).
    start_timeout_s: float = 10.0
    # A worker that left (its connection closed) keeps its tasks this long: it may be back on
    # a new connection (after a refused write it starts over at once).
    reconnect_grace_s: float = 3.0
    health: HealthPolicy = field(default_factory=HealthPolicy)
    # Sending tasks where their chat's earlier turns are cached, unless load is uneven.
    routing: RoutingPolicy = field(default_factory=RoutingPolicy)
    # The server's own broker leads whoever else announces one (a stalled or fake broker
    # cannot stop its board); a standalone one takes part in the election.
    always_lead: bool = False
    orphan_grace_s: float = 5.0  # after start, how long workers unknown to us may reconnect
    renew_s: float = 10.0  # awareness renewal (peers drop states older than 30 s)
    name: str = "broker"


@dataclass
class BrokerStats:
    assigned: int = 0
    failed: int = 0  # tasks finished failed by a repair (out of attempts)
    start_timeouts: int = 0  # tasks requeued because their worker did not start them
    invalid: int = 0  # tasks failed for an entry the broker could not act on
    passes: int = 0
    failed_passes: int = 0


class Broker:
    """Runs assignment and repair passes on one board whenever it changes."""

    def __init__(
        self, view: BoardView, settings: BrokerSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`clock`: seconds of a monotonic clock, for start deadlines and worker backoffs."""
        self._view = view
        self._settings = settings
        self._clock = clock
        # With a token, `<the token's subject>/broker-...`: the server binds ids to subjects.
        self.id = peer_id(f"broker-{uuid.uuid4().hex[:12]}", view.subject)
        self.since = time.time() * 1000.0
        self.stats = BrokerStats()
        self._health = WorkerHealth(settings.health)
        self._tracker = self._new_tracker()
        self._started_at = 0.0
        self._running = False
        # Workers seen present during the orphan grace (emptied once it is over).
        self._seen_workers: set[str] = set()
        self._workers: list[WorkerPresence] | None = None  # parsed presence, until it changes
        self._worker_states = WorkerStates()  # parses only the states that changed
        # The last pass left no worker a free slot: until a task leaves `prepared`/`doing` or
        # presence changes, a pass after a document change could assign nothing.
        self._saturated = False
        self._presence_changed = ChangeSignal()
        # Passes that failed in a row, and until when (anyio clock) no pass is tried again.
        self._failures = 0
        self._paused_until = 0.0
        # Per pass: the tasks it moved or failed already (later steps leave them alone), and
        # the entry limits of the board (read once, when first needed).
        self._handled: set[str] = set()
        self._limits: EntryLimits | None = None
        # Tasks the broker could not even fail: left alone for good (each has been logged).
        self._given_up: set[str] = set()
        # When each worker was last present (`clock`), for `_reconnecting`.
        self._last_present: dict[str, float] = {}
        view.on_remote_change(self._after_remote_change)
        view.on_presence_change(self._forget_workers)
        view.on_reset(self._reset)

    @property
    def board(self) -> BoardDoc:
        return self._view.board

    @property
    def health(self) -> WorkerHealth:
        """What the broker knows of each worker's starts (`broker.health`)."""
        return self._health

    async def run(self, *, task_status: StartStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the board until cancelled. Never raises otherwise: a failed pass is logged
        and made again after a pause."""
        self._tracker.attach()
        try:
            self._started_at = anyio.current_time()
            self._running = True
            last_renew = -1e9
            task_status.started()
            while True:
                wait = 1.0
                try:
                    now = anyio.current_time()
                    if now - last_renew >= self._settings.renew_s:
                        last_renew = now
                        self._view.publish(self._presence())
                    if now >= self._paused_until:
                        self._guarded_pass()
                    wait = self._next_wake_s()
                except BaseException as exc:
                    if not recoverable(exc):
                        raise
                    log.exception("broker loop failed")
                # Document changes run their pass as they arrive (`_after_remote_change`);
                # this loop covers presence changes, and time (leases, start deadlines, retry
                # backoffs, worker backoffs).
                with anyio.move_on_after(wait):
                    await self._presence_changed.wait()
        finally:
            self._running = False
            self._tracker.detach()

    def _next_wake_s(self) -> float:
        now = anyio.current_time()
        if self._paused_until > now:
            return self._paused_until - now
        due = self._tracker.queue.next_retry(now_ms())
        wait = 1.0 if due is None else (due - now_ms()) / 1000.0
        return min(1.0, self._settings.lease_s / 4, self._settings.start_timeout_s / 4, max(0.01, wait))

    def _guarded_pass(self) -> None:
        """A pass; one that fails is logged, and the next waits a while (it doubles from
        0.1 s to 5 s while passes keep failing) so that a failure repeating itself cannot
        keep the event loop busy. The indexes are rebuilt first, in case they caused it."""
        try:
            self.run_pass()
        except BaseException as exc:
            if not recoverable(exc):
                raise
            self._failures += 1
            self.stats.failed_passes += 1
            pause = min(_MAX_PAUSE_S, 0.1 * 2 ** min(self._failures - 1, 16))
            self._paused_until = anyio.current_time() + pause
            self._tracker.broken = True
            log.exception("broker pass failed (%d in a row); next try in %.1f s", self._failures, pause)
        else:
            self._failures = 0

    def _after_remote_change(self) -> None:
        # A pass right away, before the change is fanned out: a new task and its assignment
        # then reach every peer in one message instead of two. Only when the board changed in
        # a way a pass acts on (most updates are text streamed into `doing` entries) and
        # something waits for one: a task finishing with nothing queued needs no pass.
        if not self._running or not self._tracker.dirty or not self._tracker.waiting():
            return
        if self._saturated and not self._tracker.freed and not self._tracker.chores():
            return  # under load: a new task while every slot is taken
        if anyio.current_time() < self._paused_until:
            return  # passes are failing: the loop tries again after its pause
        self._guarded_pass()

    def _reset(self) -> None:
        # A new generation of the document: index it afresh.
        try:
            self._tracker.detach()
            self._tracker = self._new_tracker()
            if self._running:
                self._tracker.attach()
        except Exception:
            log.exception("indexing the new generation failed; trying again at the next pass")
            self._tracker.broken = True

    def _new_tracker(self) -> BoardTracker:
        return BoardTracker(
            self._view.board, self._clock,
            wants_starts_of=lambda worker: self._health.standing(worker, self._clock()) is not Standing.PROVEN,
        )

    def _forget_workers(self) -> None:
        self._workers = None
        self._saturated = False
        self._presence_changed.notify()

    def _presence(self) -> dict[str, Any]:
        return {
            c.A_ROLE: PeerRole.BROKER.value,
            c.A_ID: self.id,
            c.A_NAME: self._settings.name,
            c.A_SINCE: self.since,
            c.A_VERSION: kanbanmesh.__version__,
        }

    # -- one pass ------------------------------------------------------------------------

    def run_pass(self) -> None:
        """If leading: deduplicate, fail invalid entries, repair, cancel, assign, in one
        transaction."""
        if self._tracker.broken:
            self._tracker.rebuild()
        for worker in self._tracker.take_started():
            self._health.started(worker)
        presence = self._view.presence()
        leading = self._settings.always_lead or leader_id(self.id, self.since, presence.values()) == self.id
        if not leading:
            return
        self.stats.passes += 1
        if self._workers is None:
            self._workers = self._worker_states.workers(presence)
        ages = self._view.presence_ages()
        stale = {
            str(state.get(c.A_ID))
            for cid, state in presence.items()
            if state.get(c.A_ROLE) == PeerRole.WORKER.value and ages.get(cid, 0.0) >= self._settings.lease_s
        }
        alive = [w for w in self._workers if w.id not in stale]
        present = {w.id for w in alive}
        in_grace = anyio.current_time() - self._started_at < self._settings.orphan_grace_s
        if in_grace:
            self._seen_workers |= present
        else:
            self._seen_workers.clear()
        self._note_present(present)
        now = self._tracker.clock()
        self._handled = set()
        self._limits = None
        with self.board.doc.transaction():
            self._deduplicate()
            self._fail_invalid_entries()
            load, unstarted = self._repair(present, stale, in_grace, now)
            self._cancel_queued()
            limits = self._health.limits(present, unstarted, now)
            free = sum(free_slots(alive, load, limits).values())
            assigned = self._assign(alive, load, limits)
        self._health.forget(present, now)
        # After the commit: the pass's own moves fired the observers too, and need no pass.
        self._tracker.dirty = False
        self._tracker.freed = False
        self._saturated = assigned >= free

    def _guarded(self, task_id: str, operation: Callable[[], T]) -> T | None:
        """Run one task's operation; if it raises, fail the task (`invalid_task`) and go on.
        Returns what the operation returned, None if it raised."""
        try:
            return operation()
        except InvalidTaskError as exc:
            self._fail(task_id, str(exc))
        except BaseException as exc:
            if not recoverable(exc):
                raise
            log.exception("task %s: the broker could not act on it", task_id[:64])
            self._fail(task_id, f"invalid task: the broker could not act on it ({type(exc).__name__})")
        return None

    def _fail(self, task_id: str, message: str) -> None:
        self._handled.add(task_id)
        self._tracker.queue.discard(task_id)
        try:
            if fail_invalid(self.board, task_id, message):
                self.stats.invalid += 1
        except BaseException as exc:
            if not recoverable(exc):
                raise
            log.exception("task %s: could not fail it either; the broker leaves it alone", task_id[:64])
            self._given_up.add(task_id)

    def _entry_limits(self) -> EntryLimits:
        """The limits the server holds entries to (its `meta` map says), as read this pass."""
        if self._limits is None:
            meta = self.board.doc.get(c.META, type=Map)
            self._limits = EntryLimits.from_json(read_field(meta, c.M_LIMITS)) or EntryLimits()
        return self._limits

    def _checked(self, column: Column, task_id: str) -> TaskEntry | None:
        """The checked entry of `task_id` in `column`, None when it is gone; raises
        `InvalidTaskError`."""
        raw = read_entry(self.board.column_map(column), task_id)
        return None if raw is None else checked_entry(task_id, raw, self._entry_limits())

    def _deduplicate(self) -> None:
        suspects, self._tracker.suspects = self._tracker.duplicates(), set()
        for task_id in suspects:
            if task_id in self._given_up:
                continue
            self._guarded(task_id, partial(drop_duplicates, self.board, task_id))

    def _fail_invalid_entries(self) -> None:
        """Fail the entries the tracker could not index, unless they were fixed meanwhile."""
        for task_id, (column, why) in self._tracker.take_invalid().items():
            if task_id in self._handled or task_id in self._given_up:
                continue

            def check(task_id: str = task_id, column: Column = column, why: str = why) -> None:
                if self._checked(column, task_id) is None:
                    return  # gone
                # A field fixed in place (no new entry, so no new look by the tracker).
                if not self._tracker.reindex(task_id, column):
                    raise InvalidTaskError(why)

            self._guarded(task_id, check)

    def _repair(
        self, present: set[str], stale: set[str], in_grace: bool, now: float
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Requeue (or fail) the tasks of workers gone, silent past their lease, or late to
        start; returns the tasks held per present worker, and how many of them in `prepared`."""
        # Cancelled tasks first: they hold no slot any more.
        self._finish_cancelled(Column.PREPARED, self._tracker.prepared_cancels)
        load: dict[str, int] = {}
        unstarted: dict[str, int] = {}
        timeout = self._settings.start_timeout_s
        late: set[str] = set()
        for column, held in self._tracker.held.items():
            for task_id, worker in list(held.items()):
                if task_id in self._handled or task_id in self._given_up:
                    continue
                if worker in present:
                    if column is Column.PREPARED and self._tracker.waited(task_id, now) >= timeout:
                        late.add(worker)
                        self._requeue(task_id, column, START_TIMEOUT,
                                      f"worker {worker} did not start the task within {timeout:g} s")
                        continue
                    load[worker] = load.get(worker, 0) + 1
                    if column is Column.PREPARED:
                        unstarted[worker] = unstarted.get(worker, 0) + 1
                    continue
                if worker in stale:
                    reason = "lease_expired"
                    message = f"worker {worker} sent no heartbeat for {self._settings.lease_s:g} s"
                elif in_grace and worker not in self._seen_workers:
                    continue  # it may be reconnecting after a server restart
                elif self._reconnecting(worker):
                    continue
                else:
                    reason, message = "worker_lost", f"worker {worker} left the board"
                self._requeue(task_id, column, reason, message)
        for worker in late:  # once a pass, however many of its tasks were late
            backoff = self._health.timed_out(worker, now)
            log.warning("worker %s did not start its task in time: no new task for %g s", worker, backoff)
        return load, unstarted

    def _note_present(self, present: set[str]) -> None:
        now = self._clock()
        for worker in present:
            self._last_present[worker] = now
        grace = self._settings.reconnect_grace_s
        for worker in [w for w, seen in self._last_present.items() if now - seen > grace]:
            del self._last_present[worker]

    def _reconnecting(self, worker: str) -> bool:
        """Whether a worker that left was present within the reconnect grace: a worker whose
        write was refused starts over on a new connection at once (kanbanmesh/peer.py), and
        its tasks must not go to others meanwhile."""
        seen = self._last_present.get(worker)
        return seen is not None and self._clock() - seen <= self._settings.reconnect_grace_s

    def _requeue(self, task_id: str, column: Column, reason: str, message: str) -> None:
        def requeue() -> None:
            entry = self._checked(column, task_id)
            if entry is None:
                return
            self._count(requeue_or_fail(
                self.board, task_id, column, entry, reason, message, self._settings.retry
            ))
            if reason == START_TIMEOUT:
                self.stats.start_timeouts += 1

        self._handled.add(task_id)
        self._guarded(task_id, requeue)

    def _count(self, outcome: TaskStatus | None) -> None:
        if outcome is TaskStatus.FAILED:
            self.stats.failed += 1

    def _cancel_queued(self) -> None:
        self._finish_cancelled(Column.TODO, self._tracker.todo_cancels)

    def _finish_cancelled(self, column: Column, requests: set[str]) -> None:
        """Finish, cancelled, the tasks in `column` whose cancel flag was written (no worker
        runs them); `requests` is the tracker's set of such ids, emptied here."""
        for task_id in list(requests):
            requests.discard(task_id)
            if task_id in self._handled or task_id in self._given_up:
                continue

            def cancel(task_id: str = task_id) -> None:
                entry = self._checked(column, task_id)
                if entry is not None and entry.cancel:
                    self._handled.add(task_id)
                    finish(self.board, task_id, column, TaskStatus.CANCELLED, None, output=entry.output)

            self._guarded(task_id, cancel)

    def _assign(self, workers: list[WorkerPresence], load: dict[str, int], limits: dict[str, int]) -> int:
        """Assign what the plan says; returns how many tasks were assigned."""
        assigned = 0
        assignments = plan(self._tracker.queue, workers, load, now_ms(), limits,
                           prefixes=self._tracker.prefixes, routing=self._settings.routing)
        for task_id, worker_id in assignments:
            if task_id in self._handled or task_id in self._given_up:
                continue
            if self._guarded(task_id, partial(self._assign_one, task_id, worker_id)):
                assigned += 1
        return assigned

    def _assign_one(self, task_id: str, worker_id: str) -> bool:
        """Move one queued task to `prepared` for `worker_id`; False if it cannot go now.
        Checks the fields it reads; the move reads the whole entry before it writes."""
        queue = self._tracker.queue
        entry = read_field(self.board.column_map(Column.TODO), task_id)
        if entry is None or task_id in self._tracker.done:
            queue.discard(task_id)
            return False
        if not isinstance(entry, Map):
            raise InvalidTaskError("invalid task: the entry must be a Y.Map")
        fields = broker_fields(read_fields(entry, (c.F_ENRICHING, c.F_ATTEMPT, c.F_CREATED_AT)))
        if fields.enriching:
            queue.discard(task_id)
            return False
        assignment: dict[str, Any] = {
            c.F_WORKER: worker_id,
            c.F_ATTEMPT: fields.attempt or 1,
            c.F_ASSIGNED_AT: now_ms(),
        }
        queued = queue.get(task_id)
        if not fields.created_at and queued is not None:
            assignment[c.F_CREATED_AT] = queued.created_at
        self.board.move(task_id, Column.TODO, Column.PREPARED, PeerRole.BROKER, set_fields=assignment)
        self._handled.add(task_id)
        self.stats.assigned += 1
        return True


def recoverable(exc: BaseException) -> bool:
    """Whether the broker carries on after `exc`: any `Exception`, and a panic in pycrdt's
    Rust code (pyo3's `PanicException` derives from `BaseException`; Yrs panics on a value it
    cannot take, an integer past 64 bits say). Never a cancellation or an interrupt."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"
