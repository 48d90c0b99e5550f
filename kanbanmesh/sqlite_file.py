"""Opening the small SQLite files (the server's archive and conversations, a collection's
chunk store) the same way."""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import Iterable

from kanbanmesh.errors import StoreError


def open_sqlite(path: pathlib.Path | None, schema: Iterable[str], what: str) -> sqlite3.Connection:
    """A connection in autocommit mode, WAL with `synchronous=NORMAL` (a commit survives a
    crash of the process), with `schema` applied; `path` None is in memory. Used from worker
    threads, one at a time (callers hold a lock). Raises `StoreError` naming `what`."""
    target = ":memory:" if path is None else str(path)
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in schema:
            conn.execute(statement)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open the {what} {target}: {exc}") from exc
    return conn
