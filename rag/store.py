"""A collection's chunks and their vectors in SQLite, beside its faiss index.

SQLite is the source of truth: the index is rebuilt from the vectors stored here. A file's
chunks are replaced in one transaction, so a reader sees the old chunks or the new ones.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from kanbanmesh.errors import RagError, StoreError
from kanbanmesh.sqlite_file import open_sqlite
from rag.chunking import Chunk
from rag.embedding import Vectors
from rag.index import Ids

_SCHEMA = (
    (
        "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, digest TEXT NOT NULL,"
        " chunks INTEGER NOT NULL, ingested_at REAL NOT NULL)"
    ),
    (
        "CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL,"
        " position INTEGER NOT NULL, heading TEXT NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL)"
    ),
    "CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks (path)",
    # Vectors of a file being ingested, kept until the file's chunks are stored, so that an
    # ingest cut short resumes without embedding them again (`digest` says of which content).
    (
        "CREATE TABLE IF NOT EXISTS pending (path TEXT NOT NULL, digest TEXT NOT NULL,"
        " position INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (path, position))"
    ),
)


class ClosedOnExit:
    """`with` closes it: the lifecycle of RAG's stores (`close()` stays, for an owner that
    outlives a block, such as a collection cached by `Collections`)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class StoredChunk:
    id: int
    path: str
    position: int
    heading: str
    text: str


class ChunkStore(ClosedOnExit):
    """The chunk table of one collection; safe to use from several threads. Open while
    constructed, closed on leaving `with` (or by `close()`, for an owner that outlives a block)."""

    def __init__(self, path: Path) -> None:
        try:
            self._conn = open_sqlite(path, _SCHEMA, "chunk store")
        except StoreError as exc:
            raise RagError("store_unavailable", str(exc)) from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def digest(self, path: str) -> str | None:
        """The content digest the file had when it was last ingested, or None."""
        with self._lock:
            row = self._conn.execute("SELECT digest FROM files WHERE path = ?", (path,)).fetchone()
        return str(row[0]) if row else None

    def replace_file(self, path: str, digest: str, chunks: Sequence[Chunk], vectors: Vectors) -> int:
        """Put a file's chunks in place of its old ones; returns how many old ones went."""
        rows = [
            (path, ch.position, ch.heading, ch.text, np.asarray(vec, dtype=np.float32).tobytes())
            for ch, vec in zip(chunks, vectors, strict=True)
        ]
        with self._transaction() as conn:
            removed = conn.execute("DELETE FROM chunks WHERE path = ?", (path,)).rowcount
            conn.executemany(
                "INSERT INTO chunks (path, position, heading, text, vector) VALUES (?, ?, ?, ?, ?)", rows
            )
            conn.execute(
                "INSERT OR REPLACE INTO files (path, digest, chunks, ingested_at) VALUES (?, ?, ?, ?)",
                (path, digest, len(rows), time.time()),
            )
            conn.execute("DELETE FROM pending WHERE path = ?", (path,))
        return int(removed)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, rolled back (and refused as `store_unavailable`) on error."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise RagError("store_unavailable", f"cannot write the chunk store: {exc}") from exc

    def keep_pending(self, path: str, digest: str, positions: Sequence[int], vectors: Vectors) -> None:
        """Keep vectors of chunks of `path` (at `positions`, as `digest`'s content chunks)
        until `replace_file` stores the file; those of another digest go."""
        rows = [(path, digest, int(p), np.asarray(v, dtype=np.float32).tobytes())
                for p, v in zip(positions, vectors, strict=True)]
        with self._transaction() as conn:
            conn.execute("DELETE FROM pending WHERE path = ? AND digest != ?", (path, digest))
            conn.executemany(
                "INSERT OR REPLACE INTO pending (path, digest, position, vector) VALUES (?, ?, ?, ?)", rows
            )

    def pending_vectors(self, path: str, digest: str, dim: int) -> dict[int, Vectors]:
        """The kept vectors of `path`'s chunks for content `digest`, by position."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT position, vector FROM pending WHERE path = ? AND digest = ?", (path, digest)
            ).fetchall()
        return {int(r[0]): np.frombuffer(r[1], dtype=np.float32) for r in rows if len(r[1]) == 4 * dim}

    def vectors(self, dim: int) -> tuple[Ids, Vectors]:
        """Every chunk id and its vector, in id order."""
        with self._lock:
            rows = self._conn.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, matrix

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id, path, position, heading, text FROM chunks WHERE id IN ({marks})", list(ids)
            ).fetchall()
        return {int(r[0]): StoredChunk(int(r[0]), r[1], int(r[2]), r[3], r[4]) for r in rows}

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def files(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM files").fetchone()[0])
