"""Persistence of the Yjs updates of many boards in one SQLite file.

Every board is one Yjs document; the store keeps the document as the ordered list of
its binary updates (a row each), so loading a board is "apply every row in order".

Why not the stock ``pycrdt`` SQLite store:

* it commits every update in its own transaction, which caps it at a few hundred
  writes per second; here :meth:`BoardStore.append` only puts the update in an
  in-memory queue and a background flusher commits whole batches, one transaction
  (``executemany``) per batch;
* it queues writes as tasks that are cancelled on shutdown, losing the last updates;
  here the queue is plain data, :meth:`BoardStore.stop` and the flusher's ``finally``
  commit it (shielded from cancellation), and :meth:`BoardStore.flush_blocking` can
  still commit it from ``atexit``;
* it squashes history on its own and can end up with an empty document; here
  compaction only happens when the caller hands in a snapshot it built, and the
  snapshot is written *before* the rows it replaces are deleted, in one transaction.

All SQLite work runs in worker threads (``anyio.to_thread.run_sync``) so the event
loop never waits on the disk. One connection is shared and used by one thread at a
time (guarded by a lock); it is opened with ``check_same_thread=False`` because
successive calls land on different worker threads.
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import logging
import pathlib
import sqlite3
import threading
from types import TracebackType
from typing import NamedTuple, Self

import anyio
import anyio.abc
import anyio.to_thread

from kanbanmesh.errors import StoreError

__all__ = ["BoardStore"]

logger = logging.getLogger(__name__)

_SCHEMA = (
    # AUTOINCREMENT (not a plain rowid) so that a seq is never reused after the rows
    # with the highest seq were deleted by a compaction: append order must stay
    # strictly increasing for the whole life of the file.
    (
        "CREATE TABLE IF NOT EXISTS updates ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " board TEXT NOT NULL,"
        " data BLOB NOT NULL)"
    ),
    "CREATE INDEX IF NOT EXISTS updates_board_seq ON updates (board, seq)",
)
_INSERT = "INSERT INTO updates (board, data) VALUES (?, ?)"


class _Op(NamedTuple):
    """One queued write: an update to append, or a snapshot that replaces older rows."""

    board: str
    data: bytes
    is_snapshot: bool


class BoardStore:
    """Append-only store of the Yjs updates of many boards, in one SQLite file.

    Use it as an async context manager (or run :meth:`start` in a task group and call
    :meth:`stop`)::

        async with BoardStore(path) as store:
            store.append("board-1", update)      # never blocks, never drops
            updates = await store.load("board-1")

    :meth:`append` and :meth:`compact` are synchronous and meant to be called from the
    event loop thread (e.g. from a Yjs observer); :meth:`flush_blocking` may be called
    from any thread.
    """

    def __init__(
        self, path: pathlib.Path, *, flush_interval: float = 0.05, max_batch: int = 2000
    ) -> None:
        """Prepare a store for the SQLite file at *path*; nothing is opened until :meth:`start`.

        *flush_interval* is the longest time (seconds) a queued update waits before the
        flusher commits it. 50 ms: each commit costs the event loop a thread hop and the disk
        a WAL write, and at 10 ms they cost the server ~7% of its CPU per task under load;
        what must be on disk at once asks :meth:`flush`, as a durable submit does.
        *max_batch* is both the number of waiting updates that wakes the flusher early and
        the largest number of rows committed in one transaction.
        """
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._path = pathlib.Path(path)
        self._flush_interval = flush_interval
        self._max_batch = max_batch

        # _queue_lock guards the queue, the counters and _rows: the flusher thread pops
        # while the event loop appends.
        self._queue_lock = threading.Lock()
        self._queue: collections.deque[_Op] = collections.deque()
        self._enqueued = 0  # ops ever queued; flush() waits until _dequeued reaches it
        self._dequeued = 0  # ops taken off the queue *and committed*
        self._rows: dict[str, int] = {}

        # _db_lock guards _conn; popping a batch and committing it happen under one
        # hold of this lock, so whoever gets the lock next sees it fully committed.
        self._db_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

        self._started = False
        self._stopping = False
        self._loop_running = False
        # anyio events are created in start(), inside the event loop they belong to.
        self._wake: anyio.Event | None = None
        self._loop_done: anyio.Event | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the database, signal *task_status*, then run the flusher until :meth:`stop`.

        Meant for ``await task_group.start(store.start)``. The database's parent
        directories are created; the file runs in WAL mode with ``synchronous=NORMAL``
        (a commit survives a crash of the process, a batch costs no fsync of its own).
        Raises :class:`StoreError` (before signalling) when the file cannot be opened.
        If the flusher is cancelled, what is queued is still committed before it returns.
        """
        if self._started or self._stopping:
            raise RuntimeError("a BoardStore can only be started once")
        self._started = True
        self._loop_running = True
        self._wake = anyio.Event()
        self._loop_done = anyio.Event()
        try:
            if self._conn is None:  # __aenter__ may have opened it already
                await anyio.to_thread.run_sync(self._open)
            task_status.started()
            await self._run_flusher()
        finally:
            # Shielded: a cancelled task group must not cost the queued updates.
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(self._close)
                finally:
                    self._loop_running = False
                    self._loop_done.set()

    async def stop(self) -> None:
        """Commit everything appended so far, then close the database; idempotent.

        Shielded from cancellation. Updates appended after stop() (or when the store was
        never started) are committed through a short-lived connection. Raises
        :class:`StoreError` if they could not be committed; they stay queued.
        """
        self._stopping = True
        with anyio.CancelScope(shield=True):
            if self._loop_running:
                assert self._wake is not None and self._loop_done is not None
                self._wake.set()
                await self._loop_done.wait()
            if self._queued():
                # The flusher's last commit failed, or nothing ever ran: try once more,
                # so that a caller who awaited stop() without error knows it is on disk.
                await anyio.to_thread.run_sync(self.flush_blocking)

    async def __aenter__(self) -> Self:
        """Start the store in a task group of its own; returns once the database is open.

        Raises :class:`StoreError` (not wrapped in an exception group) when the file
        cannot be opened.
        """
        if self._started or self._stopping:
            raise RuntimeError("a BoardStore can only be started once")
        # Opened here, outside the task group, so that an open error reaches the caller
        # as a plain StoreError; start() then finds the connection already open.
        await anyio.to_thread.run_sync(self._open)
        try:
            async with contextlib.AsyncExitStack() as stack:
                tg = await stack.enter_async_context(anyio.create_task_group())
                await tg.start(self.start)
                self._exit_stack = stack.pop_all()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the store (committing everything) and leave its task group."""
        stack, self._exit_stack = self._exit_stack, None
        try:
            await self.stop()
        finally:
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ writes

    def append(self, board: str, update: bytes) -> None:
        """Queue *update* for *board*; returns at once and never drops the update.

        The flusher commits it within ``flush_interval`` (sooner when ``max_batch``
        updates wait). Use :meth:`flush` to wait for it to be on disk.
        """
        self._enqueue(_Op(board, bytes(update), False))

    def compact(self, board: str, snapshot: bytes) -> None:
        """Queue a compaction of *board*, in order with the appends.

        *snapshot* must cover every update of *board* appended before this call (e.g.
        ``doc.get_update()`` of a document built from :meth:`load` plus later updates).
        When processed, one transaction inserts it as a row and deletes every older row
        of the board; updates appended after this call are kept after the snapshot.
        """
        if not snapshot:
            # An empty snapshot would replace the board's history with nothing.
            raise ValueError("refusing to compact with an empty snapshot")
        self._enqueue(_Op(board, bytes(snapshot), True))

    def pending_rows(self, board: str) -> int:
        """Number of rows *board* has once the queue is committed (stored + queued).

        A queued compaction counts as the single snapshot row it leaves. Rows already in
        the file are counted from :meth:`start` on. Use it to decide when to compact.
        """
        with self._queue_lock:
            return self._rows.get(board, 0)

    async def flush(self) -> None:
        """Return once everything appended (or compacted) before the call is committed."""
        with self._queue_lock:
            target = self._enqueued
        await anyio.to_thread.run_sync(self._flush_to, target)

    def flush_blocking(self) -> None:
        """Commit whatever is queued, blocking the calling thread; thread-safe.

        For a last-chance flush outside async code (``atexit``, signal handlers run on
        the main thread, ...). Uses the store's connection when it is open, otherwise a
        short-lived one. Raises :class:`StoreError` when the commit fails.
        """
        self._flush_to(None)

    # ------------------------------------------------------------------ reads

    async def load(self, board: str) -> list[bytes]:
        """All updates of *board* in append order (a compaction's snapshot first).

        Commits the queue first, so updates appended but not yet flushed are included.
        """
        return await anyio.to_thread.run_sync(self._load_sync, board)

    async def boards(self) -> list[str]:
        """Names of the boards that have rows (after committing the queue), sorted."""
        return await anyio.to_thread.run_sync(self._boards_sync)

    # ------------------------------------------------------------------ internals

    def _enqueue(self, op: _Op) -> None:
        with self._queue_lock:
            self._queue.append(op)
            self._enqueued += 1
            # The count is what the board will have once this op is committed.
            self._rows[op.board] = 1 if op.is_snapshot else self._rows.get(op.board, 0) + 1
            wake = len(self._queue) >= self._max_batch
        if wake and self._wake is not None and not self._wake.is_set():
            self._wake.set()

    @property
    def unflushed(self) -> int:
        """Operations appended but not yet committed (0 once everything is on disk)."""
        return self._enqueued - self._dequeued

    def _queued(self) -> bool:
        with self._queue_lock:
            return bool(self._queue)

    async def _run_flusher(self) -> None:
        while not self._stopping:
            assert self._wake is not None
            with anyio.move_on_after(self._flush_interval):
                await self._wake.wait()
            # A fresh event before draining: appends made while the batch commits set
            # it, so a full queue is picked up right after this drain.
            self._wake = anyio.Event()
            if self._stopping:
                break  # start()'s finally does the last drain
            if not self._queued():
                continue
            try:
                await anyio.to_thread.run_sync(self._flush_to, None)
            except StoreError:
                # The batch went back into the queue; retry on the next tick rather than
                # kill the flusher (and with it the caller's task group).
                logger.exception("board store: commit failed, will retry")

    def _open(self) -> None:
        conn = self._connect()
        # Under the db lock nothing commits, so the file's counts plus the queue are
        # exact; the queue lock is taken only for the replay, not for the query, so
        # appends on the event loop never wait on the disk.
        with self._db_lock:
            try:
                counts = conn.execute("SELECT board, COUNT(*) FROM updates GROUP BY board")
                rows: dict[str, int] = {str(b): int(c) for b, c in counts.fetchall()}
            except sqlite3.Error as exc:
                conn.close()
                raise StoreError(f"cannot read board store {self._path}: {exc}") from exc
            with self._queue_lock:
                # Appends made before start() were counted without the file's rows.
                for op in self._queue:
                    rows[op.board] = 1 if op.is_snapshot else rows.get(op.board, 0) + 1
                self._rows = rows
            self._conn = conn

    def _close(self) -> None:
        with self._db_lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                self._drain(conn, None)
            except StoreError:
                # Left in the queue; stop() retries and reports it.
                logger.exception("board store: final commit failed")
            finally:
                conn.close()

    def _connect(self) -> sqlite3.Connection:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is
            # exactly one transaction.
            conn = sqlite3.connect(
                self._path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open board store {self._path}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                conn.execute(statement)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open board store {self._path}: {exc}") from exc
        return conn

    @contextlib.contextmanager
    def _connection(self) -> collections.abc.Iterator[sqlite3.Connection]:
        """The store's connection under the db lock, or a short-lived one when closed."""
        with self._db_lock:
            if self._conn is not None:
                yield self._conn
                return
            conn = self._connect()
            try:
                yield conn
            finally:
                conn.close()

    def _flush_to(self, target: int | None) -> None:
        with self._queue_lock:
            if target is None:
                target = self._enqueued
            if self._dequeued >= target:
                return  # already committed: no connection needed
        with self._connection() as conn:
            self._drain(conn, target)

    def _drain(self, conn: sqlite3.Connection, target: int | None) -> None:
        """Commit queued ops up to op number *target* (all queued when None).

        Caller holds _db_lock. Each batch is popped and committed under that hold;
        on failure it goes back to the front of the queue, so nothing is dropped.
        """
        while True:
            with self._queue_lock:
                limit = self._enqueued if target is None else target
                n = min(limit - self._dequeued, len(self._queue), self._max_batch)
                if n <= 0:
                    return
                batch = [self._queue.popleft() for _ in range(n)]
            try:
                self._commit(conn, batch)
            except BaseException as exc:
                with self._queue_lock:
                    self._queue.extendleft(reversed(batch))
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"cannot write board store {self._path}: {exc}") from exc
                raise
            with self._queue_lock:
                self._dequeued += n

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: list[_Op]) -> None:
        # The last snapshot of a board in this batch supersedes every earlier op of that
        # board in the batch: those rows would be inserted only to be deleted.
        last_snapshot: dict[str, int] = {}
        for i, op in enumerate(batch):
            if op.is_snapshot:
                last_snapshot[op.board] = i
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows: list[tuple[str, bytes]] = []
            for i, op in enumerate(batch):
                if i < last_snapshot.get(op.board, -1):
                    continue
                if not op.is_snapshot:
                    rows.append((op.board, op.data))
                    continue
                # Keep the order: appends queued before the snapshot go in first.
                if rows:
                    conn.executemany(_INSERT, rows)
                    rows = []
                # Insert before deleting, in the same transaction: the board is never
                # without its content, not even in a crash between the two.
                seq = conn.execute(_INSERT, (op.board, op.data)).lastrowid
                conn.execute("DELETE FROM updates WHERE board = ? AND seq < ?", (op.board, seq))
            if rows:
                conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _load_sync(self, board: str) -> list[bytes]:
        with self._connection() as conn:
            self._drain(conn, None)
            try:
                cur = conn.execute(
                    "SELECT data FROM updates WHERE board = ? ORDER BY seq", (board,)
                )
                return [bytes(row[0]) for row in cur.fetchall()]
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read board store {self._path}: {exc}") from exc

    def _boards_sync(self) -> list[str]:
        with self._connection() as conn:
            self._drain(conn, None)
            try:
                cur = conn.execute("SELECT DISTINCT board FROM updates ORDER BY board")
                return [str(row[0]) for row in cur.fetchall()]
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read board store {self._path}: {exc}") from exc
