"""The result archive: finished tasks that left the live board, still retrievable by id.

One SQLite file (`archive.sqlite3` beside the board store), one row per task: the whole entry
as JSON. Rows are written, and committed, *before* the entries leave the live document, so a
crash in between leaves a task in both places (archived again later, same row), never in
neither. All SQLite work runs in worker threads.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any, Self

import anyio.to_thread

from kanbanmesh.errors import StoreError
from kanbanmesh.sqlite_file import open_sqlite

_SCHEMA = (
    (
        "CREATE TABLE IF NOT EXISTS archive ("
        " board TEXT NOT NULL, id TEXT NOT NULL, owner TEXT NOT NULL, finished_at REAL NOT NULL,"
        " entry TEXT NOT NULL, PRIMARY KEY (board, id))"
    ),
    "CREATE INDEX IF NOT EXISTS archive_owner ON archive (board, owner, finished_at)",
    # Yjs client ids that wrote to an earlier generation of a board (see server/rotation.py).
    (
        "CREATE TABLE IF NOT EXISTS retired_clients (board TEXT NOT NULL, client_id INTEGER NOT NULL,"
        " PRIMARY KEY (board, client_id))"
    ),
)


@dataclass(frozen=True)
class ArchivedTask:
    id: str
    owner: str
    finished_at: float
    entry: dict[str, Any]


class TaskArchive:
    """Finished tasks by board and id; `path` None keeps them in memory (no persistence).

    Opened by `async with TaskArchive(path) as archive:` (raises `StoreError` when the file
    cannot be opened), closed when the block ends.
    """

    def __init__(self, path: pathlib.Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self._open)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    def _open(self) -> None:
        self._conn = open_sqlite(self._path, _SCHEMA, "task archive")

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def put(self, board: str, tasks: list[ArchivedTask]) -> None:
        """Store (or replace) `tasks`; returns once they are committed."""
        rows = [(board, t.id, t.owner, t.finished_at, json.dumps(t.entry)) for t in tasks]
        await anyio.to_thread.run_sync(
            self._write_sync, "INSERT OR REPLACE INTO archive VALUES (?, ?, ?, ?, ?)", rows
        )

    async def get(self, board: str, task_id: str) -> dict[str, Any] | None:
        return await anyio.to_thread.run_sync(self._get_sync, board, task_id)

    async def retire(self, board: str, client_ids: set[int]) -> None:
        """Remember client ids of an old generation of `board` (committed on return)."""
        rows = [(board, cid) for cid in client_ids]
        await anyio.to_thread.run_sync(
            self._write_sync, "INSERT OR IGNORE INTO retired_clients VALUES (?, ?)", rows
        )

    async def retired(self, board: str) -> set[int]:
        return await anyio.to_thread.run_sync(self._retired_sync, board)

    def _retired_sync(self, board: str) -> set[int]:
        with self._lock:
            rows = self._require().execute(
                "SELECT client_id FROM retired_clients WHERE board = ?", (board,)
            ).fetchall()
        return {int(r[0]) for r in rows}

    async def finished_since(self, board: str, since_ms: float) -> list[dict[str, Any]]:
        """Entries of the archived tasks of `board` that finished at or after `since_ms`."""
        return await anyio.to_thread.run_sync(self._finished_since_sync, board, since_ms)

    def _finished_since_sync(self, board: str, since_ms: float) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._require().execute(
                "SELECT entry FROM archive WHERE board = ? AND finished_at >= ?", (board, since_ms)
            ).fetchall()
        decoded = (_decode(row[0]) for row in rows)
        return [entry for entry in decoded if entry is not None]

    async def count(self, board: str) -> int:
        return await anyio.to_thread.run_sync(self._count_sync, board)

    def _write_sync(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        with self._lock:
            conn = self._require()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(statement, rows)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"cannot write the task archive: {exc}") from exc

    def _get_sync(self, board: str, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._require().execute(
                "SELECT entry FROM archive WHERE board = ? AND id = ?", (board, task_id)
            ).fetchone()
        if row is None:
            return None
        entry = _decode(row[0])
        if entry is None:  # written by something other than this archive: say so, keep serving
            return {"id": task_id, "status": "failed",
                    "error": {"code": "invalid_task", "message": "the archived entry cannot be read"}}
        return entry

    def _count_sync(self, board: str) -> int:
        with self._lock:
            row = self._require().execute(
                "SELECT COUNT(*) FROM archive WHERE board = ?", (board,)
            ).fetchone()
        return int(row[0])

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the task archive is not open")
        return self._conn


def _decode(text: str) -> dict[str, Any] | None:
    """An archived entry; None for a row that does not read as one."""
    try:
        entry = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return entry if isinstance(entry, dict) else None
