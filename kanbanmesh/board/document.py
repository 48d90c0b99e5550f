"""Reading and writing task entries in a board's pycrdt document.

A Yjs type cannot be moved, so a move creates a copy of the entry in the next map and deletes
the old one, in one transaction (one update on the wire). `output` is a Y.Text; a move that
keeps it creates a new Text with the same content, because a Text cannot be re-parented either.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from pycrdt import Array, Doc, Map, Text
from pydantic import ValidationError

from kanbanmesh.board import constants as c
from kanbanmesh.board.reads import PLAIN_TYPES, plain_fields, read_field, read_items
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import TaskEntry, TaskRequest, TaskStatus
from kanbanmesh.board.transitions import Column, check_move, winner
from kanbanmesh.errors import InvalidTaskError, TaskNotFoundError

_ABSENT = object()  # a key a map does not hold (None is a value a map may hold)


def now_ms() -> float:
    """Wall-clock time in milliseconds since the epoch, as JavaScript's `Date.now()`."""
    return time.time() * 1000.0


class BoardDoc:
    """The four root maps of one board document, and the operations on its entries."""

    def __init__(self, doc: Doc[Any]) -> None:
        self.doc = doc
        self.maps: dict[Column, Map[Any]] = {col: doc.get(col.value, type=Map) for col in Column}
        self.control: Map[Any] = doc.get(c.CONTROL, type=Map)  # drain requests (a root map, no entry)
        self.meta: Map[Any] = doc.get(c.META, type=Map)  # the server's: generation, limits

    def column_map(self, column: Column) -> Map[Any]:
        return self.maps[column]

    def locate(self, task_id: str) -> Column | None:
        """The column that holds `task_id` (the winning copy if several do), or None."""
        with self.doc.transaction():  # one for the four lookups, not one per read
            copies = [(col, read_field(self.maps[col], task_id, _ABSENT)) for col in Column]
        found = [(col, _attempt_of(entry)) for col, entry in copies if entry is not _ABSENT]
        if not found:
            return None
        return winner(found)[0]

    def entry(self, task_id: str) -> tuple[Column, Map[Any]]:
        """The column and live Y.Map of a task; raises `TaskNotFoundError`."""
        column = self.locate(task_id)
        if column is None:
            raise TaskNotFoundError(f"no task {task_id!r} on this board")
        return column, self.maps[column][task_id]

    def read(self, task_id: str) -> tuple[Column, TaskEntry]:
        """A validated copy of a task's entry and the column it is in."""
        column, ymap = self.entry(task_id)
        return column, entry_from_map(ymap)

    def ids(self, column: Column) -> list[str]:
        return list(self.maps[column].keys())

    def counts(self) -> dict[Column, int]:
        return {col: len(self.maps[col]) for col in Column}

    def create(self, request: TaskRequest) -> None:
        """Put a new task into `todo` (the client's one write)."""
        fields = request.to_fields()
        if not fields.get(c.F_CREATED_AT):
            fields[c.F_CREATED_AT] = now_ms()
        self._put(Column.TODO, request.id, fields)

    def put_fields(self, column: Column, task_id: str, fields: Mapping[str, Any]) -> None:
        """Write an entry of plain fields, checked by the caller, under `task_id` in `column`
        (the server's own writes: a checked new task, a failed invalid entry)."""
        self._put(column, task_id, fields)

    def move(
        self,
        task_id: str,
        src: Column,
        dst: Column,
        writer: PeerRole,
        *,
        set_fields: Mapping[str, Any] | None = None,
        drop_fields: frozenset[str] = frozenset(),
        keep_output: bool = True,
        new_output: bool = False,
    ) -> Map[Any]:
        """Move a task from `src` to `dst` in one transaction and return the new entry.

        `set_fields` are written into the copy, `drop_fields` left out of it. `keep_output`
        copies the current `output` text; `new_output` starts an empty one instead.
        """
        check_move(src, dst, writer)
        with self.doc.transaction():
            old = read_field(self.maps[src], task_id)
            if old is None:
                raise TaskNotFoundError(f"no task {task_id!r} in {src.value}")
            fields = plain_fields(old)
            output = fields.pop(c.F_OUTPUT, None)
            for name in drop_fields:
                fields.pop(name, None)
            if set_fields:
                fields.update(set_fields)
            if new_output:
                fields[c.F_OUTPUT] = Text()
            elif keep_output and output is not None:
                fields[c.F_OUTPUT] = Text(output if isinstance(output, str) else str(output))
            new = self._put(dst, task_id, fields)
            del self.maps[src][task_id]
        return new

    def _put(self, column: Column, task_id: str, fields: Mapping[str, Any]) -> Map[Any]:
        """`self.maps[column][task_id] = Map(fields)` in half the time: pycrdt's `Map(fields)`
        opens a transaction and type-checks per field; plain values here go straight into
        the integrated map (same structs, same order). Every create and move passes here.
        Below pycrdt's public API, as `kanbanmesh.board.reads`: tests/board/test_model.py
        holds it to `Map(fields)`."""
        with self.doc.transaction() as txn:
            entry: Map[Any] = Map()
            self.maps[column][task_id] = entry
            integrated, raw = entry.integrated, txn._txn
            for name, value in fields.items():
                # The exact-type test first: `isinstance` against pycrdt's generic types goes
                # through ABCMeta for every plain field (~20 an entry, ~1 us each).
                if type(value) not in PLAIN_TYPES and isinstance(value, Text | Map | Array):
                    entry[name] = value  # a shared type: the output Y.Text
                else:
                    integrated.insert(raw, name, value)
        return entry

    def delete(self, task_id: str, column: Column) -> None:
        with self.doc.transaction():
            if task_id in self.maps[column]:
                del self.maps[column][task_id]

    def entries(self, column: Column) -> Iterator[tuple[str, Map[Any]]]:
        yield from read_items(self.maps[column])


def _attempt_of(ymap: Any) -> int:
    try:
        return int(read_field(ymap, c.F_ATTEMPT, 0) or 0)
    except (AttributeError, TypeError, ValueError):
        return 0


def entry_from_map(ymap: Map[Any]) -> TaskEntry:
    """Validate a live entry into a `TaskEntry`; raises `InvalidTaskError`."""
    return entry_from_fields(plain_fields(ymap))


def visible_text(ymap: Map[Any], column: Column) -> str:
    """The text a reader shows for a task: its `result` once it succeeded, else the `output`
    streamed so far ("" before the first chunk). An answer with tool calls shows its `output`
    to the end: its `result` is only the text outside the calls (docs/protocol.md section 12)."""
    if column is Column.DONE and read_field(ymap, c.F_STATUS) == TaskStatus.SUCCEEDED.value \
            and read_field(ymap, c.F_TOOL_CALLS) is None:
        result = read_field(ymap, c.F_RESULT)
        if isinstance(result, str):
            return result
    output = read_field(ymap, c.F_OUTPUT)
    return str(output) if isinstance(output, Text | str) else ""


def entry_from_fields(fields: Mapping[str, Any]) -> TaskEntry:
    try:
        return TaskEntry.model_validate(dict(fields))
    except ValidationError as exc:
        raise InvalidTaskError(explain_invalid(exc)) from exc


def request_from_fields(fields: Mapping[str, Any]) -> TaskRequest:
    """Validate the fields of a new `todo` entry; raises `InvalidTaskError`."""
    try:
        return TaskRequest.model_validate(dict(fields))
    except ValidationError as exc:
        raise InvalidTaskError(explain_invalid(exc)) from exc


def explain_invalid(exc: ValidationError) -> str:
    """A schema error in one short line: `invalid task: <where>: <what>` (three at most)."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "entry"
        parts.append(f"{where}: {err['msg']}")
    return "invalid task: " + "; ".join(parts)
