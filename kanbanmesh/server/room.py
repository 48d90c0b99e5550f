"""A board room: one pycrdt document, its connections, its awareness and its persistence.

Built on pycrdt's document and the y-websocket protocol, not on pycrdt-websocket's `YRoom`,
whose behaviours DESIGN.md lists as things to fix: it never loads from its store, echoes each
update to its sender, drops updates when its fan-out buffer is full, does not send existing
awareness to a peer that joins, keeps a closed peer's awareness for 30 s and shows its own
empty state as a phantom peer. Here every update is persisted and fanned out from one
`Doc.observe` callback, to every connection except the one it came from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from pycrdt import Doc, Map, TransactionEvent

from awareness.registry import AwarenessConflictError, AwarenessRegistry
from kanbanmesh.auth import OPEN_ACCESS, Identity
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.events import change_value, event_keys, observe_events
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.board.reads import plain_fields, read_field
from kanbanmesh.board.roles import ANNOUNCEABLE, PeerRole, TokenRole
from kanbanmesh.board.schema import TaskRequest
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import ConnectionClosedError, InvalidTaskError, ProtocolError
from kanbanmesh.notify import ChangeSignal
from kanbanmesh.protocol import codec
from kanbanmesh.protocol.channel import Channel
from kanbanmesh.server.archive import ArchivedTask, TaskArchive
from kanbanmesh.server.authz import WriteRules
from kanbanmesh.server.connection import Connection, SendBatch, SharedMerges
from kanbanmesh.server.conversations import ConversationStore, task_turns
from kanbanmesh.server.memory import release_freed_memory
from kanbanmesh.server.quarantine import fail_invalid_entries
from kanbanmesh.server.quota import OwnerQuota, QuotaLimits
from kanbanmesh.server.retention import RetentionIndex
from kanbanmesh.server.rotation import generation_of, next_generation
from kanbanmesh.server.store import BoardStore
from kanbanmesh.server.validation import (
    UpdateChanges,
    UpdateRefused,
    UpdateValidator,
    check_new_task,
)

log = logging.getLogger(__name__)

# Peers that act on any task get every update at once; others only their own tasks'. Also a
# peer announcing role "admin": no `PeerRole`, and no peer of the mesh announces it, but an admin
# token (or anybody on an open server) may announce anything, and such a tool was served so.
_EAGER_ROLES = frozenset({PeerRole.BROKER.value, "admin"})


@dataclass(frozen=True)
class RoomSettings:
    keepalive_s: float = 10.0  # y-websocket reconnects after 30 s without a message
    awareness_timeout_s: float = 30.0  # as Yjs: a state not renewed for this long is gone
    compact_every: int = 5000  # persisted rows of one board before they are squashed
    lazy_s: float = 0.05  # how long other people's tasks' updates may wait to be sent
    # For a connection that announced only workers: it shows nobody anything, and needs other
    # tasks' news only to keep its replica whole (its own tasks' news is never lazy).
    worker_lazy_s: float = 0.25
    retention_s: float = 600.0  # finished tasks stay on the live board this long
    archive_batch: int = 2000  # most tasks archived in one round (one a second)
    # A new generation of the document once this many tasks have left the board (when no
    # task is running; at 4x this many even then, see server/rotation.py).
    rotate_after: int = 10_000
    # And on a board idle this long, once this many tasks have left it: at rest, a board
    # that ran a million tasks weighs what a new one does.
    rotate_idle_s: float = 60.0
    rotate_idle_min: int = 100
    default_max_attempts: int = 3  # the broker's, for tasks a forced rotation puts back
    limits: EntryLimits = field(default_factory=EntryLimits)
    quota: QuotaLimits = field(default_factory=QuotaLimits)


@dataclass
class RoomStats:
    updates_applied: int = 0
    updates_refused: int = 0
    connections_total: int = 0
    archived: int = 0
    rotations: int = 0


class BoardRoom:
    """Serves one board to any number of connections."""

    def __init__(
        self, name: str, store: BoardStore | None, archive: TaskArchive, settings: RoomSettings,
        conversations: ConversationStore | None = None,
    ) -> None:
        self.name = name
        self.doc: Doc[Any] = Doc()
        self.board = BoardDoc(self.doc)
        self.awareness = AwarenessRegistry()
        self.stats = RoomStats()
        self._store = store
        self.archive = archive
        self.conversations = conversations
        self._settings = settings
        self._retention = RetentionIndex(self.board, settings.retention_s)
        self._quota = OwnerQuota(settings.quota)
        self._subs: list[tuple[Any, Any]] = []
        self._reset_listeners: list[Callable[[], None]] = []
        self._retired: set[int] = set()  # client ids of earlier generations
        self._left_since_rotation = 0
        self._epoch = 0  # +1 per rotation; a connection made before it may no longer write
        self._writers: dict[int, str] = {}  # Yjs client id -> the subject that first wrote with it
        self._last_update_at = 0.0  # anyio clock of the last update applied
        self._last_left_at = 0.0  # anyio clock of the last connection's close
        self._unloaded = False
        self._connections: set[Connection] = set()
        self._merges = SharedMerges()  # one merge per batch that several peers wait on
        self._batch = SendBatch()  # urgent sends held while a peer's message is handled
        self._origin: Connection | None = None
        # Peers a worker's update went to before the board applied it (`_forward_early`).
        self._forwarded: frozenset[Connection] = frozenset()
        self._first_in_turn = False  # the message being handled is the loop turn's first
        self._validator: UpdateValidator | None = None
        self._ready = anyio.Event()
        self._update_listeners: list[Callable[[], None]] = []
        # Set by the hub: marks the tasks just created that pre-inference middlewares (history,
        # retrieval) must enrich before any broker may assign them, and queues them.
        self.admit: Callable[[Iterable[str]], None] | None = None
        self.changed = ChangeSignal()  # notified after every update of the board, ours included
        # One signal per task somebody in this process follows (the HTTP API's requests): woken
        # only by updates that touch that task, so N open requests do not all wake per update.
        self._task_signals: dict[str, ChangeSignal] = {}
        self._finished_listeners: list[Callable[[dict[str, Any]], None]] = []
        # What the update being applied does, for its fan-out: the tasks it touches, the
        # tasks it assigns (to which worker), the tasks it finishes. A peer gets it at once
        # if it follows one of the touched tasks, else with its next batch.
        self._touched: set[str] = set()
        self._assigned: dict[str, str] = {}
        self._finished: set[str] = set()

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def limits(self) -> EntryLimits:
        """What one task entry of this board may hold (every write is held to it)."""
        return self._settings.limits

    def idle_s(self) -> float | None:
        """How long nothing happened on this board, when it may be unloaded: nobody connected,
        nobody in this process following a task, no task in `todo`, `prepared` or `doing`;
        else None."""
        if self._connections or self._task_signals or self._unloaded:
            return None
        counts = self.board.counts()
        if counts[Column.TODO] or counts[Column.PREPARED] or counts[Column.DOING]:
            return None
        return anyio.current_time() - max(self._last_update_at, self._last_left_at)

    async def unload(self) -> None:
        """Leave memory (the hub unloads idle boards): what is not on disk yet is written, and
        a connection that comes in late is closed (1012) to reconnect to a fresh room."""
        self._unloaded = True
        if self._store is not None:
            await self._store.flush()
        self._detach()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after each update from a peer is applied to the board.

        It runs at once, outside the update's transaction and before anything is sent, so
        what it writes (the embedded broker's assignment) goes out in the same message as
        the update that caused it.
        """
        self._update_listeners.append(listener)

    @contextmanager
    def following(self, task_id: str) -> Iterator[ChangeSignal]:
        """A signal notified after each update that touches task `task_id` (its entry or its
        column), and when the board moves to a new generation; for as long as the block runs."""
        signal = self._task_signals.setdefault(task_id, ChangeSignal())
        try:
            yield signal
        finally:
            self._task_signals.pop(task_id, None)

    def on_finished(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener(fields)` with each entry that enters `done` (metrics), once the
        messages its update caused have gone out."""
        self._finished_listeners.append(listener)

    def on_reset(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after the room moved to a new generation of its document."""
        self._reset_listeners.append(listener)

    @property
    def generation(self) -> int:
        return generation_of(self.doc)

    async def start(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the board from the store, then serve until cancelled."""
        if self._store is not None:
            for update in await self._store.load(self.name):
                self.doc.apply_update(update)
        self._prepare_loaded()
        self._retired = await self.archive.retired(self.name)
        self._attach(self.doc)
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
        await self._archive_due()
        await self._maybe_rotate()
        self._maybe_compact()
        if ticks % 5 == 0:
            removal = self.awareness.expire(self._settings.awareness_timeout_s)
            if removal is not None:
                self._broadcast(codec.awareness_message(removal), None)

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

    async def _archive_due(self) -> None:
        """Move the finished tasks whose time is up from the live board to the archive:
        archive rows committed first, entries deleted after (see `kanbanmesh.server.archive`)."""
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
            return
        await self.archive.put(self.name, tasks)
        with self.doc.transaction():
            for task in tasks:
                if task.id in done:
                    del done[task.id]
        self.stats.archived += len(tasks)
        self._left_since_rotation += len(tasks)

    def _attach(self, doc: Doc[Any]) -> None:
        self.doc = doc
        self.board = BoardDoc(doc)
        # Nobody else may write under the client id of the server's own writes.
        self._writers[doc.client_id] = "\x00server"
        self._validator = UpdateValidator(doc, self._settings.limits)
        # Shallow observers: they fire when entries enter or leave a column, not for what
        # happens inside an entry (the validator reports that for peers' updates).
        self._subs = [
            (self.board.column_map(col), observe_events(self.board.column_map(col), self._column_observer(col)))
            for col in Column
        ]
        self._subs.append((doc, doc.observe(self._on_doc_update)))
        self._retention = RetentionIndex(self.board, self._settings.retention_s)
        self._retention.attach()
        self._quota.rebuild(self.board)

    def _detach(self) -> None:
        for observed, sub in self._subs:
            observed.unobserve(sub)
        self._subs = []
        self._retention.detach()
        if self._validator is not None:
            self._validator.close()  # or its twin and the old document stay alive for good

    async def _maybe_rotate(self) -> None:
        """Start a new generation of the document when enough tasks have left the board."""
        left, threshold = self._left_since_rotation, self._settings.rotate_after
        running = len(self.board.column_map(Column.PREPARED)) + len(self.board.column_map(Column.DOING))
        idle = anyio.current_time() - self._last_update_at >= self._settings.rotate_idle_s
        due = left >= 4 * threshold or (
            not running and (left >= threshold or (idle and left >= self._settings.rotate_idle_min))
        )
        if not due:
            return
        self._epoch += 1  # from here on, what the current connections send is refused
        old_writers = set(codec.decode_state_vector(self.doc.get_state()))
        await self.archive.retire(self.name, old_writers)
        self._retired |= old_writers
        fresh = next_generation(self.board, self._settings.default_max_attempts)
        self._detach()
        self._attach(fresh)
        if self._store is not None:
            self._store.compact(self.name, fresh.get_update())
            await self._store.flush()
        self._left_since_rotation = 0
        self.stats.rotations += 1
        log.info("board %s: generation %d", self.name, self.generation)
        for listener in self._reset_listeners:
            listener()
        for signal in self._task_signals.values():
            signal.notify()
        reason = f"board rotated to generation {self.generation}: reconnect with a new Y.Doc"
        for conn in [conn for conn in self._connections if conn.epoch != self._epoch]:
            await conn.close(c.CLOSE_BOARD_ROTATED, reason)
        await release_freed_memory()  # the old generation's, kept by the allocator otherwise

    def _maybe_compact(self) -> None:
        # Outside the observe callback: a snapshot cannot be taken mid-transaction.
        if self._store is not None and self._store.pending_rows(self.name) > self._settings.compact_every:
            self._store.compact(self.name, self.doc.get_update())

    def _column_observer(self, column: Column) -> Callable[[Any], None]:
        ymap = self.board.column_map(column)

        def observe(event: Any) -> None:
            for key, change in event_keys(event).items():
                self._touched.add(key)
                if change.get("action") == "delete":
                    continue
                entry = change_value(change, ymap)
                if column is Column.TODO:
                    self._quota.opened(key, read_field(entry, c.F_OWNER) if isinstance(entry, Map) else "")
                elif column is Column.DONE:
                    self._quota.closed(key)
                    if isinstance(entry, Map) and (self._finished_listeners or self.conversations):
                        # Read now (the entry may move on), recorded once the answer is out.
                        self._batch.after_release(partial(self._record_finished, self._fields_of(key, entry)))
                if column is Column.PREPARED:
                    worker = read_field(entry, c.F_WORKER) if isinstance(entry, Map) else None
                    if isinstance(worker, str):
                        self._assigned[key] = worker
                elif column is Column.DONE:
                    self._finished.add(key)

        return observe

    def _fields_of(self, task_id: str, entry: Map[Any]) -> dict[str, Any]:
        """A `done` entry's plain fields: as the update check read them when a peer's checked
        update is being applied (the board then holds what the twin held), else read now."""
        if self._origin is not None and self._validator is not None:
            fields = self._validator.changes.written.get((c.DONE, task_id))
            if isinstance(fields, dict):
                return fields
        return plain_fields(entry)

    def _on_doc_update(self, event: TransactionEvent) -> None:
        update: bytes = event.update
        origin = self._origin
        if origin is None and self._validator is not None and self._validator.mirror(update):
            # The server's own write: the twin catches up once what it caused has gone out.
            self._batch.after_release(self._validator.catch_up)
        touched, self._touched = self._touched, set()
        if self._assigned:
            for conn in self._connections:
                conn.interests.update(t for t, w in self._assigned.items() if w in conn.worker_ids)
        # An assignment is news for the worker, not for the task's owner.
        moved_on = touched.difference(self._assigned) if self._assigned else touched
        for conn in self._connections:
            if conn is not origin and conn not in self._forwarded:
                news = touched if conn.worker_ids else moved_on
                conn.enqueue_update(update, urgent=conn.wants_at_once(news))
        self._assigned = {}
        if self._finished:
            for conn in self._connections:
                conn.interests.difference_update(self._finished)
            self._finished = set()
        if self._store is not None:
            self._store.append(self.name, update)
        self.stats.updates_applied += 1
        self._last_update_at = anyio.current_time()
        self.changed.notify()
        if self._task_signals:
            for task_id in touched.intersection(self._task_signals):
                self._task_signals[task_id].notify()

    def _broadcast(self, message: bytes, exclude: Connection | None) -> None:
        for conn in self._connections:
            if conn is not exclude:
                conn.enqueue_message(message)

    def publish_awareness(self, owner: object, client_id: int, state: dict[str, object] | None) -> None:
        """Set an awareness state owned by the server process (the embedded broker)."""
        update = self.awareness.set_local(owner, client_id, state)
        self._broadcast(codec.awareness_message(update), None)

    async def serve(self, channel: Channel, identity: Identity = OPEN_ACCESS) -> None:
        """Serve one connection until it closes; a peer breaking a rule is closed with a reason."""
        await self._ready.wait()
        if self._unloaded:  # it came in while the hub unloaded this board
            await channel.close(c.CLOSE_SERVICE_RESTART, "the board was unloaded: reconnect")
            return
        conn = Connection(
            channel, keepalive_s=self._settings.keepalive_s, lazy_s=self._settings.lazy_s,
            merges=self._merges, batch=self._batch,
        )
        conn.epoch = self._epoch
        conn.identity = identity
        if identity is not OPEN_ACCESS:
            conn.rules = WriteRules(
                identity, lambda: self.board, lambda: self.awareness.announced_by(conn), self._writers
            )
        self._connections.add(conn)
        self.stats.connections_total += 1
        conn.enqueue_message(codec.sync_step1(self.doc.get_state()))
        existing = self.awareness.full_update()
        if existing is not None:
            conn.enqueue_message(codec.awareness_message(existing))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._run_sender, conn, tg.cancel_scope)
                if identity.expires_at is not None:
                    tg.start_soon(self._close_at_expiry, conn, identity.expires_at)
                try:
                    await self._read_loop(conn, tg)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._connections.discard(conn)
            self._last_left_at = anyio.current_time()
            removal = self.awareness.remove_owner(conn)
            if removal is not None:
                self._broadcast(codec.awareness_message(removal), None)

    async def _close_at_expiry(self, conn: Connection, expires_at: float) -> None:
        # A token is checked when the connection opens; it must not outlive its `exp` there.
        await anyio.sleep(max(0.0, expires_at - time.time()))
        await conn.close(c.CLOSE_TOKEN_EXPIRED, "token expired: reconnect with a fresh token")

    async def _run_sender(self, conn: Connection, scope: anyio.CancelScope) -> None:
        await conn.run_sender()
        scope.cancel()  # the peer is gone: stop reading too

    async def _read_loop(self, conn: Connection, tg: TaskGroup) -> None:
        while True:
            try:
                data = await conn.channel.recv()
            except ConnectionClosedError:
                return
            try:
                token = self._handle_batched(conn, data)
                if token is not None:
                    tg.start_soon(self._acknowledge_durable, conn, token)
            except ProtocolError as exc:
                self.stats.updates_refused += 1
                await conn.close(c.CLOSE_PROTOCOL_ERROR, _reason(f"malformed message: {exc}"))
                return
            except UpdateRefused as exc:
                self.stats.updates_refused += 1
                log.info("board %s: refused an update: %s", self.name, exc.reason)
                await conn.close(exc.code, _reason(exc.reason))
                return
            except AwarenessConflictError as exc:
                code = c.CLOSE_TRY_AGAIN_LATER if exc.retry else c.CLOSE_POLICY_VIOLATION
                await conn.close(code, _reason(str(exc)))
                return
            except Exception:
                # A bug of ours, not the peer's: say so, and keep serving everybody else.
                self.stats.updates_refused += 1
                log.exception("board %s: handling a message failed", self.name)
                await conn.close(c.CLOSE_INTERNAL_ERROR, "internal error: the message was not applied")
                return

    def _handle_batched(self, conn: Connection, data: bytes) -> int | None:
        """`_handle`, with urgent sends to direct channels held until it is over: what the
        server writes because of a peer's update then leaves in the same message."""
        self._first_in_turn = not self._batch.open  # open: others came in the same turn
        self._batch.open = True
        try:
            return self._handle(conn, data)
        finally:
            self._batch.release_soon()

    async def _acknowledge_durable(self, conn: Connection, token: int) -> None:
        # Everything this connection sent before the request is applied and queued for the
        # store: once the store has committed its queue, all of it is on disk.
        if self._store is not None:
            await self._store.flush()
        conn.enqueue_message(codec.durable_message(token))

    def _handle(self, conn: Connection, data: bytes) -> int | None:
        """Handle one message; returns the token of a durability request to acknowledge."""
        message = codec.parse_message(data)
        if isinstance(message, codec.SyncMessage):
            if message.step is codec.SyncStep.STEP1:
                if self._retired and not self._retired.isdisjoint(codec.decode_state_vector(message.payload)):
                    raise UpdateRefused(
                        c.CLOSE_BOARD_ROTATED,
                        f"your replica is of an old generation of this board (now "
                        f"{self.generation}): reconnect with a new Y.Doc",
                    )
                try:
                    reply = self.doc.get_update(message.payload)
                except ValueError as exc:
                    raise ProtocolError(f"state vector does not decode: {exc}") from exc
                conn.enqueue_message(codec.sync_step2(reply))
            else:
                self._apply(conn, message.payload)
        elif isinstance(message, codec.AwarenessMessage):
            update = self.awareness.apply(
                conn, message.update,
                subject=None if conn.identity is OPEN_ACCESS else conn.identity.subject,
                admit=partial(_admit_announcement, conn.identity),
            )
            announced = conn.worker_ids
            roles, conn.worker_ids = self.awareness.roles_of(conn)
            conn.eager = not roles.isdisjoint(_EAGER_ROLES)
            if conn.worker_ids - announced:
                # A worker (back, after a reconnect or a server restart) follows the tasks it
                # already holds: their requeue must reach it at once, or it runs on a stale
                # attempt whose writes the worker fence refuses.
                conn.interests.update(self._held_by(conn.worker_ids - announced))
            only_workers = bool(conn.worker_ids) and roles <= {PeerRole.WORKER.value}
            conn.lazy_s = self._settings.worker_lazy_s if only_workers else self._settings.lazy_s
            if update is not None:
                # Echoed to the sender too: y-websocket counts it as a sign of life.
                self._broadcast(codec.awareness_message(update), None)
        elif isinstance(message, codec.DurableMessage):
            return message.token
        else:
            full = self.awareness.full_update()
            if full is not None:
                conn.enqueue_message(codec.awareness_message(full))
        return None

    def _held_by(self, worker_ids: frozenset[str]) -> set[str]:
        """The tasks in `prepared` and `doing` assigned to one of `worker_ids`."""
        held = set()
        with self.doc.transaction():
            for column in (Column.PREPARED, Column.DOING):
                for task_id, entry in self.board.entries(column):
                    if isinstance(entry, Map) and read_field(entry, c.F_WORKER) in worker_ids:
                        held.add(task_id)
        return held

    def _forward_early(self, origin: Connection, update: bytes) -> frozenset[Connection]:
        """Send a worker's checked update at once to the peers it is urgent news for (the
        owner of a task it streams into or finishes, brokers), before the board applies it:
        the answer then does not wait for the board's apply, its observers, the store and
        the broker's pass. The board's own copy of the update skips these peers (see
        `_on_doc_update`); what the server writes because of it follows in its own message.

        Only for the first message of a loop turn: under load, when others follow in the
        same turn, a peer gets them all in one message with the batch, as before."""
        assert self._validator is not None  # only checked updates are forwarded
        changes = self._validator.changes
        news = self._validator.touched.union(
            (key for _, key in changes.written), (key for _, key in changes.removed)
        )
        forwarded = set()
        for conn in self._connections:
            if conn is origin or not conn.wants_at_once(news):
                continue
            conn.enqueue_update(update, urgent=True)  # after what it holds, in order
            conn.send_soonest()
            forwarded.add(conn)
        return frozenset(forwarded)

    def _worker_fence(self, conn: Connection) -> WriteRules:
        identity = Identity(subject=f"worker-connection-{id(conn)}", role=TokenRole.WORKER,
                            boards=[self.name])
        # Its own binding table: without tokens there is no subject to bind client ids to.
        return WriteRules(identity, lambda: self.board, lambda: self.awareness.announced_by(conn), {})

    def create_task(self, request: TaskRequest, identity: Identity) -> None:
        """Create a task for `identity` (the HTTP API's submissions) through the same gate as
        a websocket client's: the entry limits, the schema, and for a client the per-owner
        limits. Raises `UpdateRefused` with the code a websocket client would get (4413,
        4422, 4429) and writes nothing then."""
        fields = request.to_fields()
        if not fields.get(c.F_CREATED_AT):
            fields[c.F_CREATED_AT] = now_ms()
        check_new_task(fields, self._settings.limits)
        if self.board.locate(request.id) is not None:
            raise UpdateRefused(c.CLOSE_FORBIDDEN, f"forbidden: task {request.id[:24]!r} exists already")
        if identity.role is TokenRole.CLIENT:
            self._quota.admit_new({request.owner: 1}, anyio.current_time())
        self.server_write(lambda board: board.put_fields(Column.TODO, request.id, fields), created=(request.id,))

    def server_write(self, write: Callable[[BoardDoc], None], created: tuple[str, ...] = ()) -> None:
        """A write of the server's own (the HTTP API creating or cancelling a task): applied
        and fanned out, then the change listeners run as after a peer's update, so the
        embedded broker assigns at once. `created`: the tasks it created."""
        with self.doc.transaction():
            write(self.board)
        self._admit_created(created)
        self._run_listeners()

    def _admit_created(self, created: Iterable[str]) -> None:
        # Before any change listener (the embedded broker) sees the new tasks: the pipeline
        # marks those its middlewares must enrich first (kanbanmesh.server.enrichment).
        if self.admit is not None and created:
            self.admit(created)

    def _record_finished(self, fields: dict[str, Any]) -> None:
        """A task entered `done`: its conversation turns and the finished listeners (metrics)."""
        self._record_turns(fields)
        for listener in self._finished_listeners:
            listener(fields)

    def _record_turns(self, fields: dict[str, Any]) -> None:
        conversation = fields.get(c.F_CONVERSATION)
        if (self.conversations is None or not isinstance(conversation, str) or not conversation
                or fields.get(c.F_STATUS) != "succeeded"):
            return
        # In memory now, on disk shortly (the store's writer thread): never SQLite on the loop.
        self.conversations.record(
            self.name, str(fields.get(c.F_OWNER) or ""), conversation, str(fields.get(c.F_ID)),
            task_turns(fields),
        )

    def _run_listeners(self) -> None:
        for listener in self._update_listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not cost the sender its connection
                log.exception("board %s: change listener failed", self.name)

    def _apply(self, conn: Connection, update: bytes) -> None:
        if update == codec.EMPTY_UPDATE:
            return
        if conn.epoch != self._epoch:
            raise UpdateRefused(c.CLOSE_BOARD_ROTATED, "the board moved to a new generation: "
                                "reconnect with a new Y.Doc")
        if self._validator is not None:
            rules = conn.rules
            if rules is None and conn.worker_ids and not conn.eager:
                # Without auth, a connection that announced only workers is still held to the
                # worker's rules: this fences a stale attempt (a worker cut off past its lease
                # whose late writes arrive after its task went to another worker).
                if conn.fence is None:
                    conn.fence = self._worker_fence(conn)
                rules = conn.fence
            # Limits are per owner, and an owner is only somebody when a token says so.
            limited = conn.identity.role is TokenRole.CLIENT

            def authorize(changes: UpdateChanges) -> None:
                if rules is not None:
                    rules(changes)
                if limited:
                    self._quota.admit(changes, anyio.current_time())

            self._validator.check(update, authorize)
            self._touched |= self._validator.touched
            conn.interests.update(self._validator.created)
            if self._first_in_turn and conn.worker_ids and not conn.eager:
                self._forwarded = self._forward_early(conn, update)
        self._origin = conn
        try:
            self.doc.apply_update(update)
        except BaseException as exc:
            if self._validator is not None:
                self._validator.reset()  # it took what the board did not
            if isinstance(exc, Exception):
                raise UpdateRefused(c.CLOSE_INVALID_UPDATE, f"update could not be applied ({type(exc).__name__})") from exc
            raise
        finally:
            self._origin = None
            self._forwarded = frozenset()
        if self._validator is not None:
            self._admit_created(self._validator.created)
        self._run_listeners()


def _admit_announcement(identity: Identity, entry: codec.AwarenessEntry) -> None:
    """Refuse a state this connection's token may not announce (`AwarenessConflictError`,
    closed with 1008): a client may not pose as a worker or a broker (nor a worker as a
    broker), and with auth on the id of a worker or a broker is bound to the token's subject:
    `<subject>/<name>`, so that no token can act as another subject's worker."""
    allowed = ANNOUNCEABLE.get(identity.role)
    if allowed is None:
        return  # admin (or an open server, where everybody is)
    state = entry.state or {}
    role = state.get(c.A_ROLE)
    if role not in allowed:
        raise AwarenessConflictError(f"a {identity.role.value} may not announce role {role!r}")
    if role in (PeerRole.WORKER, PeerRole.BROKER):
        peer_id = state.get(c.A_ID)
        if not isinstance(peer_id, str) or peer_id.rpartition("/")[0] != identity.subject:
            raise AwarenessConflictError(
                f"forbidden: a {role} id must be '{identity.subject[:40]}/<name>', not {str(peer_id)[:40]!r}"
            )


def _reason(text: str) -> str:
    # A close frame's reason must fit in 123 bytes of UTF-8.
    raw = text.encode("utf-8")[:123]
    return raw.decode("utf-8", errors="ignore")
