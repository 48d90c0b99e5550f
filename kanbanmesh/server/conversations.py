"""Conversation history: each owner's conversations, turn by turn, in SQLite.

A task that names a `conversation` sends only its new turn(s). When it is created, the server
writes the conversation's earlier turns into the entry as `history` (so any broker and worker
get them with the task); when it succeeds, its turns and the answer are appended. A
conversation belongs to the owner of its tasks: listing, reading and deleting go by owner.

History policy (documented in docs/protocol.md): at most the last `max_turns` turns and
`max_chars` characters go into `history`, oldest dropped first; the worker then drops more of
the oldest turns if the prompt would not fit its model's context.
"""

from __future__ import annotations

import logging
import pathlib
import sqlite3
import threading
import time
from contextlib import AsyncExitStack
from typing import Any, Self

import anyio
import anyio.to_thread

from kanbanmesh.errors import StoreError
from kanbanmesh.sqlite_file import open_sqlite
from kanbanmesh.wire.conversations import ConversationSummary, Turn

log = logging.getLogger(__name__)

_SCHEMA = (
    (
        "CREATE TABLE IF NOT EXISTS turns (board TEXT NOT NULL, owner TEXT NOT NULL,"
        " conversation TEXT NOT NULL, seq INTEGER PRIMARY KEY AUTOINCREMENT, role TEXT NOT NULL,"
        " content TEXT NOT NULL, task TEXT NOT NULL, at REAL NOT NULL)"
    ),
    "CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns (board, owner, conversation, seq)",
)


class ConversationStore:
    """Turns by (board, owner, conversation); `path` None keeps them in memory.

    Opened by `async with ConversationStore(path) as store:` (raises `StoreError` when the
    file cannot be opened), which also writes recorded turns to SQLite in the background
    until the block ends; then what is left is written and the file closed.
    """

    def __init__(self, path: pathlib.Path | None, *, max_turns: int = 50, max_chars: int = 32_000) -> None:
        self._path = path
        self.max_turns = max_turns
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # Turns recorded on the event loop, not yet in SQLite: written in order by `_run_writer`
        # in a thread, and by any read first (under the same lock), so a follow-up's history
        # always sees the turn before it.
        self._unwritten: list[tuple[str, str, str, str, list[Turn], float]] = []
        self._unwritten_lock = threading.Lock()  # held for an append or a swap only, never for I/O
        self._recorded: anyio.Event | None = None  # made by _run_writer, in the event loop
        self._exit_stack: AsyncExitStack | None = None

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self._open)
        async with AsyncExitStack() as stack:
            stack.callback(self._close)  # last: writes what the writer left, then closes
            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(self._run_writer)
            stack.callback(tg.cancel_scope.cancel)  # on exit: the writer stops first
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            await stack.aclose()

    def _open(self) -> None:
        self._conn = open_sqlite(self._path, _SCHEMA, "conversation store")

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._write_unwritten()
                except StoreError:
                    log.exception("turns recorded before the stop could not be written")
                self._conn.close()
                self._conn = None

    def record(self, board: str, owner: str, conversation: str, task: str, turns: list[Turn]) -> None:
        """Add a finished task's turns without touching the disk (safe on the event loop)."""
        with self._unwritten_lock:
            self._unwritten.append((board, owner, conversation, task, turns, time.time() * 1000.0))
        if self._recorded is not None:
            self._recorded.set()

    async def _run_writer(self) -> None:
        """Write recorded turns to SQLite, in order, off the event loop, until cancelled."""
        while True:
            self._recorded = recorded = anyio.Event()
            if not self._unwritten:
                await recorded.wait()
            try:
                await anyio.to_thread.run_sync(self._write_now)
            except StoreError:
                log.exception("could not write turns to the conversation store")

    def _write_now(self) -> None:
        with self._lock:
            self._write_unwritten()

    def history(self, board: str, owner: str, conversation: str) -> list[Turn]:
        """The turns to send with a new task: the last ones within the policy's bounds."""
        turns = self.turns(board, owner, conversation)[-self.max_turns:]
        kept: list[Turn] = []
        size = 0
        for turn in reversed(turns):
            size += len(turn.content)
            if size > self.max_chars:
                break
            kept.append(turn)
        return list(reversed(kept))

    def turns(self, board: str, owner: str, conversation: str) -> list[Turn]:
        with self._lock:
            self._write_unwritten()
            rows = self._require().execute(
                "SELECT role, content FROM turns WHERE board = ? AND owner = ? AND conversation = ?"
                " ORDER BY seq", (board, owner, conversation),
            ).fetchall()
        return [Turn(role=r[0], content=r[1]) for r in rows]

    def _write_unwritten(self) -> None:
        """Write the recorded turns; the caller holds the lock. On failure they are dropped
        (a StoreError says so) rather than retried forever."""
        with self._unwritten_lock:
            batch, self._unwritten = self._unwritten, []
        if not batch:
            return
        conn = self._require()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for board, owner, conversation, task, turns, at in batch:
                # A task's turns go in once, even if it is seen finishing twice.
                if conn.execute("SELECT 1 FROM turns WHERE board = ? AND task = ? LIMIT 1",
                                (board, task)).fetchone() is None:
                    conn.executemany(
                        "INSERT INTO turns (board, owner, conversation, role, content, task, at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(board, owner, conversation, t.role, t.content, task, at) for t in turns],
                    )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"cannot write the conversation store: {exc}") from exc

    async def summaries(self, board: str, owner: str) -> list[ConversationSummary]:
        return await anyio.to_thread.run_sync(self._list_sync, board, owner)

    def _list_sync(self, board: str, owner: str) -> list[ConversationSummary]:
        with self._lock:
            self._write_unwritten()
            rows = self._require().execute(
                "SELECT conversation, COUNT(*), MAX(at) FROM turns WHERE board = ? AND owner = ?"
                " GROUP BY conversation ORDER BY MAX(at) DESC", (board, owner),
            ).fetchall()
        return [ConversationSummary(conversation=r[0], turns=r[1], updated_at=r[2]) for r in rows]

    async def delete(self, board: str, owner: str, conversation: str) -> int:
        return await anyio.to_thread.run_sync(self._delete_sync, board, owner, conversation)

    def _delete_sync(self, board: str, owner: str, conversation: str) -> int:
        with self._lock:
            self._write_unwritten()
            cur = self._require().execute(
                "DELETE FROM turns WHERE board = ? AND owner = ? AND conversation = ?",
                (board, owner, conversation),
            )
        return int(cur.rowcount)

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the conversation store is not open")
        return self._conn


def task_turns(fields: dict[str, Any]) -> list[Turn]:
    """The turns a finished task adds to its conversation: what it sent, then the answer."""
    sent: list[Turn] = []
    messages = fields.get("messages")
    if isinstance(messages, list):
        sent = [Turn(role=str(m.get("role")), content=str(m.get("content")))
                for m in messages if isinstance(m, dict) and m.get("role") != "system"]
    elif isinstance(fields.get("prompt"), str):
        sent = [Turn(role="user", content=fields["prompt"])]
    return [*sent, Turn(role="assistant", content=str(fields.get("result") or ""))]
