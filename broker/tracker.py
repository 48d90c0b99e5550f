"""What the broker knows of a board between passes, kept current by observers.

A pass must not read every entry of the board: it reads the few entries it acts on. The
tracker holds the rest: the queue of `todo` (with each task's earliest retry time), cancel
requests, who holds each task in `prepared` and `doing` and since when a task waits in
`prepared` for its worker to start it, which workers started a task, which tasks are in `done`
(so that a task found in two columns, after concurrent moves, is noticed at once), and which
entries the broker cannot act on (a pass fails them).

No observer may raise: pycrdt re-raises an observer's exception when the transaction ends, that
is in whoever applied the update (the server handling a peer's message, a standalone broker's
connection). An entry whose fields do not check is noted as invalid; anything else that goes
wrong marks the indexes `broken`, and the next pass rebuilds them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Map, Subscription

from broker.entries import broker_fields
from broker.scheduler import QueuedTask, TodoQueue
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.events import (
    change_value,
    event_keys,
    event_path,
    is_map_event,
    observe_events,
)
from kanbanmesh.board.prefix import prefix_hashes, task_turns
from kanbanmesh.board.reads import read_field
from kanbanmesh.board.schema import TaskKind
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import InvalidTaskError

log = logging.getLogger(__name__)

_ABSENT = object()  # a field an entry does not hold (None is a value it may hold)
# The fields a queued task is ordered and held back by.
_QUEUE_FIELDS = (
    c.F_CANCEL, c.F_ENRICHING, c.F_CREATED_AT, c.F_MODEL, c.F_PRIORITY, c.F_RETRY_AT, c.F_KIND,
)
# The fields a task's turns are read from (`kanbanmesh.board.prefix.task_turns`).
_TURN_FIELDS = (c.F_HISTORY, c.F_MESSAGES, c.F_PROMPT, c.F_AFTER_RESULTS)


@dataclass
class BoardTracker:
    """Observer-maintained indexes of one board."""

    board: BoardDoc
    # Seconds of a monotonic clock: when a task was seen entering `prepared`.
    clock: Callable[[], float] = time.monotonic
    # Whether a start by this worker is news (the broker does not trust it yet): a task that
    # goes `prepared -> done` at once costs a read of its entry only then.
    wants_starts_of: Callable[[str], bool] = lambda worker: True
    queue: TodoQueue = field(default_factory=TodoQueue)
    todo_cancels: set[str] = field(default_factory=set)
    prepared_cancels: set[str] = field(default_factory=set)
    held: dict[Column, dict[str, str]] = field(
        default_factory=lambda: {Column.PREPARED: {}, Column.DOING: {}}
    )
    # When each task in `prepared` was seen entering it, by this tracker's clock: the start
    # deadline counts from there (not from `assigned_at`: another broker's clock, and a value
    # on the board that anybody might have written).
    prepared_since: dict[str, float] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    # Task ids seen in more than one column since the last pass.
    suspects: set[str] = field(default_factory=set)
    # Entries the broker cannot act on, seen since the last pass: task id -> (column, why).
    invalid: dict[str, tuple[Column, str]] = field(default_factory=dict)
    # Whether anything a pass acts on changed since the last pass: an entry entered or left a
    # column, or a field changed inside a queued or prepared task. Text streamed into `doing`
    # entries does not count, so a worker's chunks cost the broker nothing.
    dirty: bool = True
    # Whether a task left `prepared` or `doing` since the last pass: a worker's slot may be
    # free again (the broker skips passes while no slot is free and none of this happened).
    freed: bool = True
    # Whether an observer failed: the indexes may be wrong until the next `rebuild`.
    broken: bool = False
    # Workers seen starting a task (moving it out of `prepared` themselves) since the last pass.
    _started: list[str] = field(default_factory=list)
    # Tasks that left `prepared` since the last pass, with their worker: a move's insert and
    # delete reach the observers of two columns in no set order.
    _left_prepared: dict[str, str] = field(default_factory=dict)
    _subs: list[tuple[Map[Any], Subscription]] = field(default_factory=list)

    def attach(self) -> None:
        """Start observing and index what is on the board now."""
        todo = self.board.column_map(Column.TODO)
        prepared = self.board.column_map(Column.PREPARED)
        doing = self.board.column_map(Column.DOING)
        done = self.board.column_map(Column.DONE)
        self._subs = [
            (todo, observe_events(todo, self._guarded(self._on_todo_events), deep=True)),
            (prepared, observe_events(prepared, self._guarded(self._on_prepared_events), deep=True)),
            # Shallow: `doing` entries change with every streamed chunk, `done` needs no more.
            (doing, observe_events(doing, self._guarded(self._on_doing_event))),
            (done, observe_events(done, self._guarded(self._on_done_event))),
        ]
        self.rebuild()

    def detach(self) -> None:
        for ymap, sub in self._subs:
            ymap.unobserve(sub)
        self._subs = []

    def rebuild(self) -> None:
        """Index the board afresh (at attach, and after an observer failed)."""
        self.broken = False
        self.queue.clear()
        self.todo_cancels.clear()
        self.prepared_cancels.clear()
        self.invalid.clear()
        since = dict(self.prepared_since)  # a rebuild does not restart anybody's deadline
        self.prepared_since.clear()
        try:
            for task_id, entry in self.board.entries(Column.TODO):
                self._enqueue(task_id, entry)
            for column, held in self.held.items():
                held.clear()
                for task_id, entry in self.board.entries(column):
                    self._hold(column, task_id, entry)
                    if column is Column.PREPARED and task_id in since and task_id in held:
                        self.prepared_since[task_id] = since[task_id]
                    if column is Column.PREPARED and self._flag(entry, c.F_CANCEL):
                        self.prepared_cancels.add(task_id)
            self.done = set(self.board.ids(Column.DONE))
        except Exception:
            log.exception("indexing the board failed; trying again at the next pass")
            self.broken = True
        live = set(self.queue.ids()) | set(self.held[Column.PREPARED]) | set(self.held[Column.DOING])
        self.suspects = {task_id for task_id in live if len(self.columns_of(task_id)) > 1}
        self.dirty = self.freed = True

    def chores(self) -> bool:
        """Whether a pass has anything to do besides assigning: cancels to finish, copies to
        deduplicate, invalid entries to fail."""
        return bool(self.todo_cancels or self.prepared_cancels or self.invalid or self.duplicates())

    def waiting(self) -> bool:
        """Whether a pass has anything to act on besides repairs: queued tasks, cancels to
        finish, copies to deduplicate, invalid entries to fail. (Repairs follow presence and
        time: the broker's loop runs them.)"""
        return bool(self.queue) or self.chores()

    def duplicates(self) -> set[str]:
        """The suspects still indexed in more than one column, now that the transaction's
        observers have all run (a move's insert is often seen before its delete); the others
        are forgotten."""
        if self.suspects:
            self.suspects = {t for t in self.suspects if len(self.columns_of(t)) > 1}
        return self.suspects

    def columns_of(self, task_id: str) -> list[Column]:
        """Every column that holds a copy of `task_id` (by the indexes)."""
        found = []
        if task_id in self.queue:
            found.append(Column.TODO)
        found.extend(col for col, held in self.held.items() if task_id in held)
        if task_id in self.done:
            found.append(Column.DONE)
        return found

    def waited(self, task_id: str, now: float) -> float:
        """Seconds task `task_id` has waited in `prepared` for its start (0 if not there)."""
        since = self.prepared_since.get(task_id)
        return 0.0 if since is None else now - since

    def prefixes(self, task_id: str) -> list[str]:
        """The prefix hashes of a queued task's turns (`kanbanmesh.board.prefix`), read from its
        entry now. Not indexed with the queue: a task's turns are its largest fields, and only
        a task that a worker's advertised cache could match needs them (`broker.routing` asks
        only then, once per assignment). [] when they cannot be read: routing falls back to
        load, and whether the task is valid is for the pass to find."""
        entry = read_field(self.board.column_map(Column.TODO), task_id)
        if not isinstance(entry, Map):
            return []
        try:
            return prefix_hashes(task_turns(read_fields(entry, _TURN_FIELDS)))
        except Exception:  # a value Python cannot read (nested too deep, say)
            log.debug("task %s: its turns could not be read for routing", task_id[:64],
                      exc_info=True)
            return []

    def take_started(self) -> list[str]:
        """The workers seen starting a task since the last call (one per start)."""
        started, self._started = self._started, []
        self._left_prepared.clear()
        return started

    def take_invalid(self) -> dict[str, tuple[Column, str]]:
        invalid, self.invalid = self.invalid, {}
        return invalid

    def reindex(self, task_id: str, column: Column) -> bool:
        """Index the entry of `task_id` in `column` again, as if it had just arrived (one
        fixed in place, which no observer looks at); False when it is still invalid."""
        entry = read_field(self.board.column_map(column), task_id)
        if column is Column.TODO:
            self._enqueue(task_id, entry)
        elif column in self.held:
            self._hold(column, task_id, entry)
        return task_id not in self.invalid

    # -- observers -------------------------------------------------------------------

    def _guarded(self, observer: Callable[[Any], None]) -> Callable[[Any], None]:
        def guarded(events: Any) -> None:
            try:
                observer(events)
            except Exception:
                log.exception("a board observer failed; the broker re-indexes the board")
                self.broken = True
                self.dirty = True

        return guarded

    def _flag(self, entry: Any, name: str) -> bool:
        """A boolean field, read as the schema reads it; False when it is not one (whatever
        the entry holds, the pass's own check decides about it)."""
        try:
            value = read_field(entry, name, _ABSENT)
            return value is not _ABSENT and bool(getattr(broker_fields({name: value}), name))
        except InvalidTaskError:
            return False

    def _invalid(self, task_id: str, column: Column, why: str) -> None:
        self.invalid[task_id] = (column, why)
        self.dirty = True

    def _enqueue(self, task_id: str, entry: Any) -> None:
        self.queue.discard(task_id)
        if not isinstance(entry, Map):
            self._invalid(task_id, Column.TODO, "invalid task: the entry must be a Y.Map")
            return
        try:
            fields = broker_fields(read_fields(entry, _QUEUE_FIELDS))
        except InvalidTaskError as exc:
            self._invalid(task_id, Column.TODO, str(exc))
            return
        self._forget_invalid(task_id, Column.TODO)
        if fields.cancel:
            self.todo_cancels.add(task_id)
        if fields.enriching:
            # The server's middlewares have not finished with it (kanbanmesh.server.enrichment):
            # not assignable yet; it is queued when the marker goes. A cancel still counts.
            return
        # A task without `created_at` (a JavaScript client may leave it out) is as old as
        # its arrival here, not older than every other task; it is stamped when assigned.
        self.queue.add(
            QueuedTask.make(
                task_id, fields.model, fields.priority, fields.created_at or now_ms(),
                not_before=fields.retry_at or 0.0, kind=fields.kind or TaskKind.CHAT,
            )
        )
        self._note_copy(task_id, Column.TODO)

    def _hold(self, column: Column, task_id: str, entry: Any) -> None:
        if not isinstance(entry, Map):
            self._invalid(task_id, column, "invalid task: the entry must be a Y.Map")
            return
        try:
            worker = broker_fields(read_fields(entry, (c.F_WORKER,))).worker or ""
        except InvalidTaskError as exc:
            self._invalid(task_id, column, str(exc))
            return
        self._forget_invalid(task_id, column)
        held = self.held[column]
        if column is Column.PREPARED and (held.get(task_id) != worker or task_id not in self.prepared_since):
            self.prepared_since[task_id] = self.clock()
        held[task_id] = worker
        if column is Column.DOING and worker:
            self._started.append(worker)  # only the assigned worker moves a task to `doing`
            self._left_prepared.pop(task_id, None)  # credited: its finish need not be
        self._note_copy(task_id, column)

    def _note_copy(self, task_id: str, column: Column) -> None:
        if any(col is not column for col in self.columns_of(task_id)):
            self.suspects.add(task_id)

    def _on_todo_events(self, events: list[Any]) -> None:
        self.dirty = True
        roots, cancels, enrichments = column_changes(events)
        for event in roots:
            for key, change in event_keys(event).items():
                if change.get("action") == "delete":
                    self.queue.discard(key)
                    self._forget_invalid(key, Column.TODO)
                else:
                    self._enqueue(key, change_value(change, self.board.column_map(Column.TODO)))
        self.todo_cancels.update(cancels)  # the pass reads the flag
        todo = self.board.column_map(Column.TODO)
        for task_id in enrichments:
            if task_id in todo:
                self._enqueue(task_id, read_field(todo, task_id))  # marked: out of the queue; cleared: in

    def _on_prepared_events(self, events: list[Any]) -> None:
        self.dirty = True
        roots, cancels, _ = column_changes(events)
        for event in roots:
            self._on_held_keys(Column.PREPARED, event)
        self.prepared_cancels.update(cancels)  # the pass reads the flag

    def _on_doing_event(self, event: Any) -> None:
        self.dirty = True
        self._on_held_keys(Column.DOING, event)

    def _on_held_keys(self, column: Column, event: Any) -> None:
        for key, change in event_keys(event).items():
            if change.get("action") == "delete":
                worker = self.held[column].pop(key, None)
                if column is Column.PREPARED:
                    self.prepared_since.pop(key, None)
                    if worker and key not in self.held[Column.DOING]:
                        self._left_prepared[key] = worker
                self._forget_invalid(key, column)
                self.freed = True
            else:
                self._hold(column, key, change_value(change, self.board.column_map(column)))

    def _on_done_event(self, event: Any) -> None:
        self.dirty = True
        done = self.board.column_map(Column.DONE)
        for key, change in event_keys(event).items():
            if change.get("action") == "delete":
                self.done.discard(key)
                continue
            self.done.add(key)
            self._note_copy(key, Column.DONE)
            worker = self.held[Column.PREPARED].get(key) or self._left_prepared.get(key)
            if worker and self.wants_starts_of(worker):
                self._credit_finish(done, key, worker)

    def _credit_finish(self, done: Map[Any], task_id: str, worker: str) -> None:
        """A task went from `prepared` straight to `done`: its worker started it if it wrote
        the move (a worker answering at once does), not if the broker did (a cancel)."""
        entry = read_field(done, task_id)
        if not isinstance(entry, Map):
            return
        values = read_fields(entry, (c.F_WORKER, c.F_STARTED_AT))
        started_at = values.get(c.F_STARTED_AT)
        if values.get(c.F_WORKER) == worker and type(started_at) in (int, float):
            self._started.append(worker)

    def _forget_invalid(self, task_id: str, column: Column) -> None:
        noted = self.invalid.get(task_id)
        if noted is not None and noted[0] is column:
            del self.invalid[task_id]


def read_fields(entry: Map[Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The fields `names` an entry holds (those it does not are left out), in one transaction."""
    values = {}
    with entry.doc.transaction():
        for name in names:
            value = read_field(entry, name, _ABSENT)
            if value is not _ABSENT:
                values[name] = value
    return values


def column_changes(events: list[Any]) -> tuple[list[Any], list[str], list[str]]:
    """A column's deep events, read in one walk: those on the column itself (entries added or
    removed), the ids of entries whose `cancel` flag was written, and the ids of entries whose
    `enriching` marker was set or removed."""
    roots: list[Any] = []
    cancels: list[str] = []
    enrichments: list[str] = []
    for event in events:
        if not is_map_event(event):
            continue
        path = event_path(event)
        if not path:
            roots.append(event)
        elif len(path) == 1:
            keys = event_keys(event)
            if c.F_CANCEL in keys:
                cancels.append(str(path[0]))
            if c.F_ENRICHING in keys:
                enrichments.append(str(path[0]))
    return roots, cancels, enrichments
