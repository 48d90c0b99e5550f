"""A board room: one pycrdt document, its connections, its awareness and its persistence.

Built on pycrdt's document and the y-websocket protocol, not on pycrdt-websocket's `YRoom`,
which never loads from its store, echoes each update to its sender, drops updates when its
fan-out buffer is full, does not send existing awareness to a peer that joins, keeps a closed
peer's awareness for 30 s and shows its own empty state as a phantom peer. Here every update
is persisted and fanned out from one `Doc.observe` callback, to every connection except the
one it came from.

`BoardRoom` composes the room's parts, one job each:

- `kanbanmesh.server.lifecycle`: the document's life (load, archive, compaction, rotation);
- `kanbanmesh.server.session` and `kanbanmesh.server.ingress`: a connection's messages, checked
  and applied;
- `kanbanmesh.server.changes`: what each update sets off (fan-out, persistence, the quota's
  count, the record of finished tasks, followers of a task);
- `kanbanmesh.server.fanout`: who gets each update, and how soon;
- `kanbanmesh.server.presence`: awareness states, their expiry, what they tell the fan-out.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
from anyio.abc import TaskStatus
from pycrdt import Doc

from awareness.registry import AwarenessRegistry
from kanbanmesh.auth import OPEN_ACCESS, Identity
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.schema import TaskRequest
from kanbanmesh.board.transitions import Column
from kanbanmesh.notify import ChangeSignal, Listeners, Subscription
from kanbanmesh.protocol import codec
from kanbanmesh.protocol.channel import Channel
from kanbanmesh.server.archive import TaskArchive
from kanbanmesh.server.changes import BoardChanges
from kanbanmesh.server.connection import Connection
from kanbanmesh.server.conversations import ConversationStore
from kanbanmesh.server.fanout import FanOut
from kanbanmesh.server.ingress import Ingress
from kanbanmesh.server.lifecycle import RoomDocument
from kanbanmesh.server.memory import release_freed_memory
from kanbanmesh.server.presence import Presence
from kanbanmesh.server.room_settings import RoomSettings, RoomStats
from kanbanmesh.server.session import Session
from kanbanmesh.server.store import BoardStore
from kanbanmesh.server.validation import UpdateRefused, check_new_task

__all__ = ["BoardRoom", "RoomSettings", "RoomStats"]

log = logging.getLogger(__name__)


class BoardRoom:
    """Serves one board to any number of connections."""

    def __init__(
        self, name: str, store: BoardStore | None, archive: TaskArchive, settings: RoomSettings,
        conversations: ConversationStore | None = None,
    ) -> None:
        self.name = name
        self.stats = RoomStats()
        self.archive = archive
        self.conversations = conversations
        self._settings = settings
        self._document = RoomDocument(name, store, archive, settings)
        self._fanout = FanOut()
        self._changes = BoardChanges(name, self._document, self._fanout, self.stats, conversations)
        self._document.watch(self._changes.column_observer, self._changes.on_update)
        self._presence = Presence(settings, self._fanout, self._document.held_by)
        self._ingress = Ingress(self._document, self._fanout, self._presence, self._after_write)
        self.awareness: AwarenessRegistry = self._presence.registry
        self.changed = self._changes.changed  # notified after every update of the board, ours included
        self._last_left_at = 0.0  # anyio clock of the last connection's close
        self._unloaded = False
        self._ready = anyio.Event()
        self._update_listeners: Listeners[[]] = Listeners()
        self._reset_listeners: Listeners[[]] = Listeners()
        # Set by the hub: marks the tasks just created that pre-inference middlewares (history,
        # retrieval) must enrich before any broker may assign them, and queues them.
        self.admit: Callable[[Iterable[str]], None] | None = None

    @property
    def doc(self) -> Doc[Any]:
        """The board's document (a new one with each generation)."""
        return self._document.doc

    @property
    def board(self) -> BoardDoc:
        return self._document.board

    @property
    def generation(self) -> int:
        return self._document.generation

    @property
    def connections(self) -> int:
        return len(self._fanout.connections)

    @property
    def limits(self) -> EntryLimits:
        """What one task entry of this board may hold (every write is held to it)."""
        return self._settings.limits

    def idle_s(self) -> float | None:
        """How long nothing happened on this board, when it may be unloaded: nobody connected,
        nobody in this process following a task, no task in `todo`, `prepared` or `doing`;
        else None."""
        if self._fanout.connections or self._changes.followed or self._unloaded:
            return None
        counts = self.board.counts()
        if counts[Column.TODO] or counts[Column.PREPARED] or counts[Column.DOING]:
            return None
        return anyio.current_time() - max(self._changes.last_update_at, self._last_left_at)

    async def unload(self) -> None:
        """Leave memory (the hub unloads idle boards): what is not on disk yet is written, and
        a connection that comes in late is closed (1012) to reconnect to a fresh room."""
        self._unloaded = True
        await self._document.flush()
        self._document.detach()

    def on_change(self, listener: Callable[[], None]) -> Subscription:
        """Call `listener()` after each update from a peer is applied to the board.

        It runs at once, outside the update's transaction and before anything is sent, so
        what it writes (the embedded broker's assignment) goes out in the same message as
        the update that caused it.
        """
        return self._update_listeners.add(listener)

    @contextmanager
    def following(self, task_id: str) -> Iterator[ChangeSignal]:
        """A signal notified after each update that touches task `task_id` (its entry or its
        column), and when the board moves to a new generation; for as long as the block runs."""
        with self._changes.following(task_id) as signal:
            yield signal

    def on_finished(self, listener: Callable[[dict[str, Any]], None]) -> Subscription:
        """Call `listener(fields)` with each entry that enters `done` (metrics), once the
        messages its update caused have gone out."""
        return self._changes.on_finished(listener)

    def on_reset(self, listener: Callable[[], None]) -> Subscription:
        """Call `listener()` after the room moved to a new generation of its document."""
        return self._reset_listeners.add(listener)

    async def start(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the board from the store, then serve until cancelled."""
        await self._document.load()
        self._ready.set()
        task_status.started()
        ticks = 0
        while True:
            await anyio.sleep(1.0)
            ticks += 1
            try:
                await self._tick(ticks)
            except Exception:
                # A bug in one chore must not take the server (every board) down with it;
                # the next tick tries again.
                log.exception("board %s: housekeeping failed", self.name)

    async def _tick(self, ticks: int) -> None:
        self.stats.archived += await self._document.archive_due()
        if self._document.rotation_due(self._changes.last_update_at):
            await self._rotate()
        self._document.maybe_compact()
        if ticks % 5 == 0:
            self._presence.expire()

    async def _rotate(self) -> None:
        """Start a new generation of the document, and close the connections of the old one."""
        await self._document.rotate()
        log.info("board %s: generation %d", self.name, self.generation)
        self._reset_listeners.notify()
        self._changes.notify_followers()
        reason = f"board rotated to generation {self.generation}: reconnect with a new Y.Doc"
        epoch = self._document.epoch
        for conn in [conn for conn in self._fanout.connections if conn.epoch != epoch]:
            await conn.close(c.CLOSE_BOARD_ROTATED, reason)
        await release_freed_memory()  # the old generation's, kept by the allocator otherwise

    def publish_awareness(self, owner: object, client_id: int, state: dict[str, object] | None) -> None:
        """Set an awareness state owned by the server process (the embedded broker)."""
        self._presence.publish(owner, client_id, state)

    async def serve(self, channel: Channel, identity: Identity = OPEN_ACCESS) -> None:
        """Serve one connection until it closes; a peer breaking a rule is closed with a reason."""
        await self._ready.wait()
        if self._unloaded:  # it came in while the hub unloaded this board
            await channel.close(c.CLOSE_SERVICE_RESTART, "the board was unloaded: reconnect")
            return
        conn = Connection(
            channel, keepalive_s=self._settings.keepalive_s, lazy_s=self._settings.lazy_s,
            merges=self._fanout.merges, batch=self._fanout.batch, identity=identity,
            epoch=self._document.epoch,
        )
        if identity is not OPEN_ACCESS:
            conn.hold_to(self._ingress.token_rules(conn))
        self._fanout.add(conn)
        conn.enqueue_message(codec.sync_step1(self.doc.get_state()))
        self._presence.welcome(conn)
        try:
            await Session(conn, self._ingress, self._document, self.stats).run()
        finally:
            self._fanout.discard(conn)
            self._last_left_at = anyio.current_time()
            self._presence.leave(conn)

    def create_task(self, request: TaskRequest, identity: Identity) -> None:
        """Create a task for `identity` (the HTTP API's submissions) through the same gate as
        a websocket client's: the entry limits, the schema, and for a client the per-owner
        limits. Raises `UpdateRefused` with the code a websocket client would get (4413,
        4422, 4429) and writes nothing then."""
        self.create_tasks([request], identity)

    def create_tasks(self, requests: Sequence[TaskRequest], identity: Identity) -> None:
        """`create_task` for several tasks at once (the choices of one request): all of them,
        in one write, or none."""
        entries: list[tuple[str, dict[str, Any]]] = []
        for request in requests:
            fields = request.to_fields()
            if not fields.get(c.F_CREATED_AT):
                fields[c.F_CREATED_AT] = now_ms()
            check_new_task(fields, self._settings.limits)
            if self.board.locate(request.id) is not None:
                raise UpdateRefused(c.CLOSE_FORBIDDEN, f"forbidden: task {request.id[:24]!r} exists already")
            entries.append((request.id, fields))
        if identity.role is TokenRole.CLIENT:
            owners = Counter(request.owner for request in requests)
            self._document.quota.admit_new(dict(owners), anyio.current_time())

        def write(board: BoardDoc) -> None:
            for task_id, fields in entries:
                board.put_fields(Column.TODO, task_id, fields)

        self.server_write(write, created=tuple(task_id for task_id, _ in entries))

    def server_write(self, write: Callable[[BoardDoc], None], created: tuple[str, ...] = ()) -> None:
        """A write of the server's own (the HTTP API creating or cancelling a task): applied
        and fanned out, then the change listeners run as after a peer's update, so the
        embedded broker assigns at once. `created`: the tasks it created."""
        with self.doc.transaction():
            write(self.board)
        self._after_write(created)

    def _after_write(self, created: Iterable[str]) -> None:
        # Before any change listener (the embedded broker) sees the new tasks: the pipeline
        # marks those its middlewares must enrich first (kanbanmesh.server.enrichment).
        if self.admit is not None and created:
            self.admit(created)
        for listener in self._update_listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not cost the sender its connection
                log.exception("board %s: change listener failed", self.name)
