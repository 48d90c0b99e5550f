"""The collections under one data directory, each owned by one board, opened on first use and
kept open.

The server owns one (with its `ModelCache`) and hands it to the retrieval middleware; the
embedding model is loaded once per process, lazily, by the first search that needs it.

A collection belongs to the board it was ingested for: it lives in `<data dir>/rag/<board>/`,
and every read names the board, so a task or a listing on board B looks in B's folder and
nowhere else. A collection of another board is not found exactly as one that does not exist:
nothing tells a tenant what other boards hold.

Collections ingested before boards owned them (`<data dir>/rag/<name>/`, a global namespace)
are moved once into board `default`'s folder (`migrate_global_layout`): that is the board a
client without `--board` used, and leaving them readable by every board would keep the leak
open. An operator gives one to another board by moving its folder to `rag/<board>/<name>/`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

from kanbanmesh.board.constants import BOARD_NAME_PATTERN, DEFAULT_BOARD
from kanbanmesh.errors import RagError
from rag.collection import (
    COLLECTION_NAME_PATTERN,
    Collection,
    CollectionConfig,
    SearchHit,
    check_name,
    read_config,
)
from rag.embedding import ModelCache
from rag.store import ClosedOnExit

log = logging.getLogger(__name__)

_BOARD = re.compile(BOARD_NAME_PATTERN)
_NAME = re.compile(COLLECTION_NAME_PATTERN)
_CONFIG = "collection.json"  # a folder holding one directly is a collection (rag.collection)
# Where migrating collections wait between their two renames: a name no board can have.
_MIGRATING = ".migrating"


def check_board(board: str) -> str:
    """`board`, if it is a valid board name (and so a safe path component); raises `RagError`
    `invalid_board` otherwise."""
    # fullmatch: with `match`, "b\n" would pass (`$` matches before a final newline).
    if not _BOARD.fullmatch(board):
        raise RagError("invalid_board", f"invalid board name {board!r}")
    return board


def migrate_global_layout(root: Path) -> list[str]:
    """Move the collections of the old global layout (`root/<name>/collection.json`) into board
    `default`'s folder (`root/default/<name>/`); the names moved. Safe to repeat, to run in two
    processes at once, and to resume after a crash: each collection is first renamed aside,
    then into place (a collection named `default` must leave `root/default` before that
    becomes board `default`'s folder)."""
    if not root.is_dir():
        return []
    staging = root / _MIGRATING
    legacy = sorted(
        p.name for p in root.iterdir() if (p / _CONFIG).is_file() and p.name != _MIGRATING
    )
    if legacy:
        staging.mkdir(exist_ok=True)
    for name in legacy:
        _rename(root / name, staging / name)
    if not staging.is_dir():
        return []
    board_root = root / DEFAULT_BOARD
    board_root.mkdir(exist_ok=True)
    moved: list[str] = []
    for folder in sorted(staging.iterdir()):
        target = board_root / folder.name
        if target.exists():
            if folder.exists():  # else another process just moved it there
                log.warning(
                    "rag: not migrating %s: board %r already has a collection %r; move it by hand",
                    folder,
                    DEFAULT_BOARD,
                    folder.name,
                )
            continue
        if _rename(folder, target):
            moved.append(folder.name)
            log.warning(
                "rag: collection %r (global, from an older version) now belongs to board %r",
                folder.name,
                DEFAULT_BOARD,
            )
    try:
        staging.rmdir()
    except OSError:
        pass  # not empty (a conflict left behind), or another process removed it first
    return moved


def _rename(source: Path, target: Path) -> bool:
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return False  # another process moved it first
    return True


class Collections(ClosedOnExit):
    """Collections under `root` (`<data dir>/rag`), per board; thread-safe, every call blocks.

    The same lifecycle as the server's other stores: a context manager (`async with` in the
    server, `with` in the synchronous `rag` commands) that closes every collection it opened on
    exit. Collections open lazily, at their first use, because a board may have hundreds."""

    def __init__(self, root: Path, models: ModelCache) -> None:
        self.root = root
        self.models = models
        self._open: dict[tuple[str, str], Collection] = {}
        self._lock = threading.Lock()
        self._migrated = False

    def folder(self, board: str) -> Path:
        """Board `board`'s collections folder (which may not exist yet); raises `RagError`
        `invalid_board`. The first call migrates the old global layout."""
        check_board(board)
        with self._lock:
            if not self._migrated:
                try:
                    migrate_global_layout(self.root)
                except OSError as exc:  # a read-only data directory, say
                    # Fail closed: what was not moved stays where no board looks.
                    log.error("rag: cannot migrate the collections in %s: %s", self.root, exc)
                self._migrated = True
        return self.root / board

    def get(self, board: str, name: str) -> Collection:
        """Board `board`'s collection `name`; raises `RagError` `collection_not_found` (whether
        no board has it or another board does), `invalid_board`, `invalid_collection`."""
        folder = self.folder(board)
        key = (board, check_name(name))
        with self._lock:
            collection = self._open.get(key)
            if collection is None:
                try:
                    collection = Collection.open(folder, name, self.models)
                except RagError as exc:
                    if exc.code != "collection_not_found":
                        raise
                    raise RagError(
                        "collection_not_found",
                        f"no collection {name!r} on board {board!r} "
                        f"(ingest documents into it: rag ingest --board {board})",
                    ) from None
                self._open[key] = collection
            return collection

    def search(self, board: str, name: str, question: str, k: int) -> list[SearchHit]:
        return self.get(board, name).search(question, k)

    def names(self, board: str) -> list[str]:
        """The names of board `board`'s collections, sorted."""
        folder = self.folder(board)
        if not folder.is_dir():
            return []
        return sorted(
            p.name for p in folder.iterdir() if _NAME.fullmatch(p.name) and (p / _CONFIG).is_file()
        )

    def configs(self, board: str) -> list[CollectionConfig]:
        """Board `board`'s collections' configurations (name, chunks, model, index), by name."""
        folder = self.folder(board)
        configs = []
        for name in self.names(board):
            try:
                config = read_config(folder, name)
            except RagError as exc:  # one broken collection does not hide the others
                log.warning("rag: board %r: %s", board, exc.message)
                continue
            if config is not None:
                configs.append(config)
        return configs

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
