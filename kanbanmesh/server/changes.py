"""What each change of a room's board sets off.

One `Doc.observe` callback per document (`on_update`) fans the update out to the connections,
persists it, counts it and wakes whoever follows a task it touched. The room's column
observers (`column_observer`, shallow: they fire when entries enter or leave a column) note
for the fan-out which tasks an update touches, assigns and finishes, keep the per-owner quota's
open tasks, and record each task that enters `done` (its conversation turns, the finished
listeners) once the messages its update caused have gone out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import anyio
from pycrdt import Map, TransactionEvent

from kanbanmesh.board import constants as c
from kanbanmesh.board.events import change_value, event_keys
from kanbanmesh.board.follow import KeyedSignals
from kanbanmesh.board.reads import plain_fields, read_field
from kanbanmesh.board.transitions import Column
from kanbanmesh.notify import ChangeSignal, Listeners, Subscription
from kanbanmesh.server.conversations import ConversationStore, task_turns
from kanbanmesh.server.fanout import FanOut
from kanbanmesh.server.lifecycle import RoomDocument
from kanbanmesh.server.room_settings import RoomStats


class BoardChanges:
    """Reacts to every change of one room's document, whatever its generation."""

    def __init__(
        self, name: str, document: RoomDocument, fanout: FanOut, stats: RoomStats,
        conversations: ConversationStore | None,
    ) -> None:
        self._name = name
        self._document = document
        self._fanout = fanout
        self._stats = stats
        self._conversations = conversations
        self._finished_listeners: Listeners[[dict[str, Any]]] = Listeners()
        self.changed = ChangeSignal()  # notified after every update of the board, ours included
        # One signal per task somebody in this process follows (the HTTP API's requests): woken
        # only by updates that touch that task, so N open requests do not all wake per update.
        self._task_signals = KeyedSignals()
        self._last_update_at = 0.0

    @property
    def last_update_at(self) -> float:
        """The anyio clock of the last update of the board (0: none yet)."""
        return self._last_update_at

    @property
    def followed(self) -> bool:
        """Whether anybody in this process follows a task (`following`)."""
        return bool(self._task_signals)

    @contextmanager
    def following(self, task_id: str) -> Iterator[ChangeSignal]:
        with self._task_signals.holding(task_id) as signal:
            yield signal

    def notify_followers(self) -> None:
        """Wake every follower of a task (the board moved to a new generation)."""
        self._task_signals.notify_all()

    def on_finished(self, listener: Callable[[dict[str, Any]], None]) -> Subscription:
        return self._finished_listeners.add(listener)

    def column_observer(self, column: Column) -> Callable[[Any], None]:
        """The observer of the entries entering and leaving `column` of the current document."""
        ymap = self._document.board.column_map(column)
        fanout, quota = self._fanout, self._document.quota

        def observe(event: Any) -> None:
            for key, change in event_keys(event).items():
                fanout.note_touched(key)
                if change.get("action") == "delete":
                    continue
                entry = change_value(change, ymap)
                if column is Column.TODO:
                    quota.opened(key, read_field(entry, c.F_OWNER) if isinstance(entry, Map) else "")
                elif column is Column.PREPARED:
                    worker = read_field(entry, c.F_WORKER) if isinstance(entry, Map) else None
                    if isinstance(worker, str):
                        fanout.note_assigned(key, worker)
                elif column is Column.DONE:
                    quota.closed(key)
                    if isinstance(entry, Map) and (self._finished_listeners or self._conversations):
                        # Read now (the entry may move on), recorded once the answer is out.
                        fanout.batch.after_release(partial(self._record_finished, self._fields_of(key, entry)))
                    fanout.note_finished(key)

        return observe

    def _fields_of(self, task_id: str, entry: Map[Any]) -> dict[str, Any]:
        """A `done` entry's plain fields: as the update check read them when a peer's checked
        update is being applied (the board then holds what the twin held), else read now."""
        validator = self._document.validator
        if self._fanout.origin is not None and validator is not None:
            fields = validator.changes.written.get((c.DONE, task_id))
            if isinstance(fields, dict):
                return fields
        return plain_fields(entry)

    def _record_finished(self, fields: dict[str, Any]) -> None:
        """A task entered `done`: its conversation turns and the finished listeners (metrics)."""
        conversation = fields.get(c.F_CONVERSATION)
        if (self._conversations is not None and isinstance(conversation, str) and conversation
                and fields.get(c.F_STATUS) == "succeeded"):
            # In memory now, on disk shortly (the store's writer thread): never SQLite on the loop.
            self._conversations.record(
                self._name, str(fields.get(c.F_OWNER) or ""), conversation, str(fields.get(c.F_ID)),
                task_turns(fields),
            )
        self._finished_listeners.notify(fields)

    def on_update(self, event: TransactionEvent) -> None:
        update: bytes = event.update
        validator = self._document.validator
        if self._fanout.origin is None and validator is not None and validator.mirror(update):
            # The server's own write: the twin catches up once what it caused has gone out.
            self._fanout.batch.after_release(validator.catch_up)
        touched = self._fanout.send(update)
        self._document.persist(update)
        self._stats.updates_applied += 1
        self._last_update_at = anyio.current_time()
        self.changed.notify()
        if self._task_signals:
            self._task_signals.notify_each(touched)
