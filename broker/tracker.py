"""What the broker knows of a board between passes, kept current by observers.

A pass must not read every entry of the board: it reads the few entries it acts on. The
tracker holds the rest: the queue of `todo` (with each task's earliest retry time), cancel
requests, who holds each task in `prepared` and `doing`, and which tasks are in `done`, so
that a task found in two columns (concurrent moves) is noticed at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pycrdt import Map, Subscription

from broker.repair import as_number
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
from kanbanmesh.board.reads import read_field
from kanbanmesh.board.transitions import Column


@dataclass
class BoardTracker:
    """Observer-maintained indexes of one board."""

    board: BoardDoc
    queue: TodoQueue = field(default_factory=TodoQueue)
    todo_cancels: set[str] = field(default_factory=set)
    prepared_cancels: set[str] = field(default_factory=set)
    held: dict[Column, dict[str, str]] = field(
        default_factory=lambda: {Column.PREPARED: {}, Column.DOING: {}}
    )
    done: set[str] = field(default_factory=set)
    # Task ids seen in more than one column since the last pass.
    suspects: set[str] = field(default_factory=set)
    # Whether anything a pass acts on changed since the last pass: an entry entered or left a
    # column, or a field changed inside a queued or prepared task. Text streamed into `doing`
    # entries does not count, so a worker's chunks cost the broker nothing.
    dirty: bool = True
    # Whether a task left `prepared` or `doing` since the last pass: a worker's slot may be
    # free again (the broker skips passes while no slot is free and none of this happened).
    freed: bool = True
    _subs: list[tuple[Map[Any], Subscription]] = field(default_factory=list)

    def attach(self) -> None:
        """Start observing and index what is on the board now."""
        todo = self.board.column_map(Column.TODO)
        prepared = self.board.column_map(Column.PREPARED)
        doing = self.board.column_map(Column.DOING)
        done = self.board.column_map(Column.DONE)
        self._subs = [
            (todo, observe_events(todo, self._on_todo_events, deep=True)),
            (prepared, observe_events(prepared, self._on_prepared_events, deep=True)),
            # Shallow: `doing` entries change with every streamed chunk, `done` needs no more.
            (doing, observe_events(doing, self._on_doing_event)),
            (done, observe_events(done, self._on_done_event)),
        ]
        self.rebuild()

    def detach(self) -> None:
        for ymap, sub in self._subs:
            ymap.unobserve(sub)
        self._subs = []

    def rebuild(self) -> None:
        self.queue.clear()
        for task_id, entry in self.board.entries(Column.TODO):
            self._enqueue(task_id, entry)
        for column, held in self.held.items():
            held.clear()
            for task_id, entry in self.board.entries(column):
                self._hold(column, task_id, entry)
                if column is Column.PREPARED and read_field(entry, c.F_CANCEL):
                    self.prepared_cancels.add(task_id)
        self.done = set(self.board.ids(Column.DONE))
        live = set(self.queue.ids()) | set(self.held[Column.PREPARED]) | set(self.held[Column.DOING])
        self.suspects = {task_id for task_id in live if len(self.columns_of(task_id)) > 1}

    def chores(self) -> bool:
        """Whether a pass has anything to do besides assigning: cancels to finish, copies to
        deduplicate."""
        return bool(self.todo_cancels or self.prepared_cancels or self.duplicates())

    def waiting(self) -> bool:
        """Whether a pass has anything to act on besides repairs: queued tasks, cancels to
        finish, or copies to deduplicate. (Repairs follow presence and time: the broker's
        loop runs them.)"""
        return bool(self.queue or self.todo_cancels or self.prepared_cancels or self.duplicates())

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

    # -- observers -------------------------------------------------------------------

    def _enqueue(self, task_id: str, entry: Any) -> None:
        if not isinstance(entry, Map):
            return
        if read_field(entry, c.F_CANCEL):
            self.todo_cancels.add(task_id)
        if read_field(entry, c.F_ENRICHING):
            # The server's middlewares have not finished with it (kanbanmesh.server.enrichment):
            # not assignable yet; it is queued when the marker goes. A cancel still counts.
            self.queue.discard(task_id)
            return
        # A task without `created_at` (a JavaScript client may leave it out) is as old as
        # its arrival here, not older than every other task; it is stamped when assigned.
        created_at = as_number(read_field(entry, c.F_CREATED_AT)) or now_ms()
        self.queue.add(
            QueuedTask.make(
                task_id,
                str(read_field(entry, c.F_MODEL) or ""),
                as_number(read_field(entry, c.F_PRIORITY)),
                created_at,
                not_before=as_number(read_field(entry, c.F_RETRY_AT)),
            )
        )
        self._note_copy(task_id, Column.TODO)

    def _hold(self, column: Column, task_id: str, entry: Any) -> None:
        if isinstance(entry, Map):
            self.held[column][task_id] = str(read_field(entry, c.F_WORKER) or "")
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
                else:
                    self._enqueue(key, change_value(change, self.board.column_map(Column.TODO)))
        self.todo_cancels.update(cancels)
        todo = self.board.column_map(Column.TODO)
        for task_id in enrichments:
            self._enqueue(task_id, read_field(todo, task_id))  # marked: out of the queue; cleared: in

    def _on_prepared_events(self, events: list[Any]) -> None:
        self.dirty = True
        roots, cancels, _ = column_changes(events)
        for event in roots:
            self._on_held_keys(Column.PREPARED, event)
        self.prepared_cancels.update(cancels)

    def _on_doing_event(self, event: Any) -> None:
        self.dirty = True
        self._on_held_keys(Column.DOING, event)

    def _on_held_keys(self, column: Column, event: Any) -> None:
        for key, change in event_keys(event).items():
            if change.get("action") == "delete":
                self.held[column].pop(key, None)
                self.freed = True
            else:
                self._hold(column, key, change_value(change, self.board.column_map(column)))

    def _on_done_event(self, event: Any) -> None:
        self.dirty = True
        for key, change in event_keys(event).items():
            if change.get("action") == "delete":
                self.done.discard(key)
            else:
                self.done.add(key)
                self._note_copy(key, Column.DONE)


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
