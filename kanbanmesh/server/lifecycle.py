"""A board's document through its life: loaded from the store, watched while it serves,
finished tasks archived from it, its stored history compacted, and replaced by its next
generation (`kanbanmesh.server.rotation`).

What must stay in step with the document lives here too and follows it to each generation:
the update check's twin (`UpdateValidator`), the retention index, the per-owner quota, the
Yjs client ids of earlier generations, and which subject each client id writes for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from pycrdt import Doc, Map, TransactionEvent

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.events import observe_events
from kanbanmesh.board.reads import plain_fields, read_field
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import InvalidTaskError
from kanbanmesh.protocol import codec
from kanbanmesh.server.archive import ArchivedTask, TaskArchive
from kanbanmesh.server.quarantine import fail_invalid_entries
from kanbanmesh.server.quota import OwnerQuota
from kanbanmesh.server.retention import RetentionIndex
from kanbanmesh.server.room_settings import RoomSettings
from kanbanmesh.server.rotation import generation_of, next_generation
from kanbanmesh.server.store import BoardStore
from kanbanmesh.server.validation import UpdateValidator

log = logging.getLogger(__name__)

# Nobody else may write under the client id of the server's own writes.
_SERVER_WRITER = "\x00server"


class RoomDocument:
    """The live document of one board and what is kept in step with it. Its attributes are
    for the room's other parts to read; only its own methods change them (`writers` excepted:
    the write rules bind client ids in it)."""

    def __init__(
        self, name: str, store: BoardStore | None, archive: TaskArchive, settings: RoomSettings,
    ) -> None:
        self.name = name
        self._store = store
        self._archive = archive
        self._settings = settings
        self._column_observer: Callable[[Column], Callable[[Any], None]] | None = None
        self._on_update: Callable[[TransactionEvent], None] | None = None
        self.doc: Doc[Any] = Doc()
        self.board = BoardDoc(self.doc)
        self.validator: UpdateValidator | None = None  # from `load` on
        self.quota = OwnerQuota(settings.quota)
        self._retention = RetentionIndex(self.board, settings.retention_s)
        self.retired: set[int] = set()  # client ids of earlier generations
        self.writers: dict[int, str] = {}  # Yjs client id -> the subject that first wrote with it
        self.epoch = 0  # +1 per rotation; a connection made before it may no longer write
        self._left_since_rotation = 0
        self._subs: list[tuple[Any, Any]] = []

    @property
    def generation(self) -> int:
        return generation_of(self.doc)

    def watch(
        self, column_observer: Callable[[Column], Callable[[Any], None]],
        on_update: Callable[[TransactionEvent], None],
    ) -> None:
        """Before `load`: `column_observer(column)` makes the observer of the entries entering
        and leaving `column` (shallow: not what happens inside an entry; the validator reports
        that for peers' updates); `on_update(event)` is called with every update. Both are
        attached anew to each generation."""
        self._column_observer = column_observer
        self._on_update = on_update

    async def load(self) -> None:
        """Load the board from the store, then watch it."""
        if self._store is not None:
            for update in await self._store.load(self.name):
                self.doc.apply_update(update)
        self._prepare_loaded()
        self.retired = await self._archive.retired(self.name)
        self._attach(self.doc)

    def _prepare_loaded(self) -> None:
        """Before anybody connects: fail the entries no check ever saw that are invalid
        (`kanbanmesh/server/quarantine.py`), and publish the entry limits in `meta`; both
        written to the store like any update."""
        before = self.doc.get_state()
        failed = fail_invalid_entries(self.board, self._settings.limits)
        if failed:
            log.warning("board %s: %d invalid entries failed at load", self.name, len(failed))
        limits = self._settings.limits.to_json()
        meta = self.doc.get(c.META, type=Map)
        if meta.get(c.M_LIMITS) != limits:
            meta[c.M_LIMITS] = limits
        if self._store is not None and self.doc.get_state() != before:
            self._store.append(self.name, self.doc.get_update(before))

    def _attach(self, doc: Doc[Any]) -> None:
        self.doc = doc
        self.board = BoardDoc(doc)
        self.writers[doc.client_id] = _SERVER_WRITER
        self.validator = UpdateValidator(doc, self._settings.limits)
        self._subs = []
        if self._column_observer is not None and self._on_update is not None:
            self._subs = [
                (self.board.column_map(col), observe_events(self.board.column_map(col), self._column_observer(col)))
                for col in Column
            ]
            self._subs.append((doc, doc.observe(self._on_update)))
        self._retention = RetentionIndex(self.board, self._settings.retention_s)
        self._retention.attach()
        self.quota.rebuild(self.board)

    def detach(self) -> None:
        """Stop watching the document (the hub unloads the board, or a new generation starts)."""
        for observed, sub in self._subs:
            observed.unobserve(sub)
        self._subs = []
        self._retention.detach()
        if self.validator is not None:
            self.validator.close()  # or its twin and the old document stay alive for good

    def persist(self, update: bytes) -> None:
        if self._store is not None:
            self._store.append(self.name, update)

    async def flush(self) -> None:
        """Return once what was persisted so far is on disk."""
        if self._store is not None:
            await self._store.flush()

    def held_by(self, worker_ids: frozenset[str]) -> set[str]:
        """The tasks in `prepared` and `doing` assigned to one of `worker_ids`."""
        held = set()
        with self.doc.transaction():
            for column in (Column.PREPARED, Column.DOING):
                for task_id, entry in self.board.entries(column):
                    if isinstance(entry, Map) and read_field(entry, c.F_WORKER) in worker_ids:
                        held.add(task_id)
        return held

    async def archive_due(self) -> int:
        """Move the finished tasks whose time is up from the live board to the archive:
        archive rows committed first, entries deleted after (see `kanbanmesh.server.archive`).
        Returns how many."""
        due = self._retention.due(now_ms(), self._settings.archive_batch)
        done = self.board.column_map(Column.DONE)
        tasks = []
        for task_id in due:
            entry = read_field(done, task_id)
            if isinstance(entry, Map):
                try:
                    fields = plain_fields(entry)
                except InvalidTaskError as exc:
                    fields = {c.F_ID: task_id, "unreadable": str(exc)}
                finished = fields.get(c.F_FINISHED_AT)
                tasks.append(ArchivedTask(
                    task_id, str(fields.get(c.F_OWNER) or ""),
                    float(finished) if isinstance(finished, int | float) else 0.0, fields,
                ))
        if not tasks:
            return 0
        await self._archive.put(self.name, tasks)
        with self.doc.transaction():
            for task in tasks:
                if task.id in done:
                    del done[task.id]
        self._left_since_rotation += len(tasks)
        return len(tasks)

    def rotation_due(self, last_update_at: float) -> bool:
        """Whether enough tasks have left the board for a new generation (`last_update_at`:
        the anyio clock of the board's last update)."""
        left, threshold = self._left_since_rotation, self._settings.rotate_after
        running = len(self.board.column_map(Column.PREPARED)) + len(self.board.column_map(Column.DOING))
        idle = anyio.current_time() - last_update_at >= self._settings.rotate_idle_s
        return left >= 4 * threshold or (
            not running and (left >= threshold or (idle and left >= self._settings.rotate_idle_min))
        )

    async def rotate(self) -> None:
        """Start the next generation of the document; the connections of this one may no
        longer write from the first line on (`epoch`), the room closes them."""
        self.epoch += 1
        old_writers = set(codec.decode_state_vector(self.doc.get_state()))
        await self._archive.retire(self.name, old_writers)
        self.retired |= old_writers
        fresh = next_generation(self.board, self._settings.default_max_attempts)
        self.detach()
        self._attach(fresh)
        if self._store is not None:
            self._store.compact(self.name, fresh.get_update())
            await self._store.flush()
        self._left_since_rotation = 0

    def maybe_compact(self) -> None:
        """Squash the board's stored rows once there are many. Outside the observe callback:
        a snapshot cannot be taken mid-transaction."""
        if self._store is not None and self._store.pending_rows(self.name) > self._settings.compact_every:
            self._store.compact(self.name, self.doc.get_update())
