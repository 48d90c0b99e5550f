"""Write authorization: what a connection's role lets it change on a board.

Checked on every incoming update, from what the update does (`UpdateChanges`, read off the
validator's twin) against the board as it was before it (the room's document: the update is
not applied yet). Any breach refuses the whole update with 4403 and a reason.

- `client` (subject S): new entries in `todo` with `owner` S; `cancel` and `ack` on entries
  whose owner is S. Nothing else.
- `worker`: only tasks assigned to one of the worker ids its connection announced in
  awareness: their moves `prepared -> doing -> done` (deleting its own copies), the fields a
  worker writes (an embed task's `dimensions` only where the task named none), appends to
  their `output`; and removing its own drain request.
- `broker`: moves of existing tasks between columns, deletions, the fields a broker writes; the
  `control` map. It creates no task and writes no output.
- `admin`: anything the schema allows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pycrdt import Map

from kanbanmesh.auth import Identity
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.board.reads import plain_fields, read_field
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.schema import (
    BROKER_FIELDS,
    CLIENT_FIELDS,
    REQUEST_FIELDS,
    SERVER_FIELDS,
    WORKER_FIELDS,
)
from kanbanmesh.board.transitions import Column
from kanbanmesh.server.validation import UpdateChanges, UpdateRefused

# Fields a client may not put into a task it creates: the broker's, the worker's, the server's.
_NOT_FOR_CLIENTS = (BROKER_FIELDS | WORKER_FIELDS | SERVER_FIELDS) - REQUEST_FIELDS


def _forbid(reason: str) -> UpdateRefused:
    return UpdateRefused(c.CLOSE_FORBIDDEN, f"forbidden: {reason}")


class WriteRules:
    """The write rights of one connection."""

    def __init__(
        self,
        identity: Identity,
        board: Callable[[], BoardDoc],
        announced: Callable[[], tuple[frozenset[str], frozenset[str]]],
        writers: dict[int, str],
    ) -> None:
        """`board` gives the room's current document; `announced` the worker ids and names
        this connection announced in awareness; `writers` (shared by the room's connections)
        binds each Yjs client id to the subject that first wrote with it."""
        self.identity = identity
        self._board = board
        self._announced = announced
        self._writers = writers

    def __call__(self, changes: UpdateChanges) -> None:
        # Structs written under somebody else's client id would fork that client's history.
        for cid in changes.writers:
            bound = self._writers.get(cid)
            if bound is not None and bound != self.identity.subject:
                raise _forbid(f"client id {cid} writes for another subject")
        role = self.identity.role
        if role is not TokenRole.ADMIN:
            self._check_role(role, changes)
        for cid in changes.writers:
            self._writers.setdefault(cid, self.identity.subject)

    def _check_role(self, role: TokenRole, changes: UpdateChanges) -> None:
        if changes.meta:
            raise _forbid("the meta map is the server's")
        if role is TokenRole.CLIENT:
            self._client(changes)
        elif role is TokenRole.WORKER:
            self._worker(changes)
        elif role is TokenRole.BROKER:
            self._broker(changes)
        else:  # a role that writes nothing (metrics), or one this code does not know
            raise _forbid(f"a {role.value} token writes nothing")

    # -- client ---------------------------------------------------------------------------

    def _client(self, changes: UpdateChanges) -> None:
        board = self._board()
        subject = self.identity.subject
        if changes.removed or changes.texts or changes.control:
            raise _forbid("a client may only create tasks and set cancel/ack on its own")
        for (column, key), fields in changes.written.items():
            if column != c.TODO:
                raise _forbid(f"a client may only create tasks in todo, not in {column}")
            if board.locate(key) is not None:
                raise _forbid(f"task {key[:24]!r} exists already")
            if fields.get(c.F_OWNER) != subject:
                raise _forbid(f"a task's owner must be you ({subject[:24]!r})")
            taken = set(fields) & _NOT_FOR_CLIENTS
            if taken:
                raise _forbid(f"a new task may not set {min(taken)!r}")
        for (column, task), names in changes.fields.items():
            if not names <= CLIENT_FIELDS:
                extra = min(names - CLIENT_FIELDS)
                raise _forbid(f"a client may set only cancel/ack, not {extra!r}")
            before = _entry(board, column, task)
            if before is None or before.get(c.F_OWNER) != subject:
                raise _forbid(f"task {task[:24]!r} is not yours")

    # -- worker ---------------------------------------------------------------------------

    def _worker(self, changes: UpdateChanges) -> None:
        board = self._board()
        ids, worker_names = self._announced()
        if not ids:
            raise _forbid("announce yourself as a worker (awareness) before writing")
        allowed_control = {c.DRAIN_PREFIX + x for x in ids | worker_names}
        if not changes.control <= allowed_control:
            raise _forbid("a worker may only remove its own drain request")
        # Which of the tasks the update touches it holds, by id (looked up one by one: the
        # board may hold thousands); an entry is read whole only if the update copies it.
        touched = {key for _, key in changes.removed} | {key for _, key in changes.written}
        touched |= {key for _, key in changes.fields} | {key for _, key in changes.texts}
        held_before: dict[str, Map[Any]] = {}
        with board.doc.transaction():  # one for all these reads, not one per read
            for task_id in touched:
                # `doing` first: of two copies this worker holds, the later one counts.
                for held_column in (Column.DOING, Column.PREPARED):
                    entry = read_field(board.column_map(held_column), task_id)
                    if isinstance(entry, Map) and read_field(entry, c.F_WORKER) in ids:
                        held_before[task_id] = entry
                        break
        for column, key in changes.removed:
            if column not in (c.PREPARED, c.DOING) or key not in held_before:
                raise _forbid(f"task {key[:24]!r} is not assigned to you")
        for (column, key), fields in changes.written.items():
            held = held_before.get(key)
            if column not in (c.DOING, c.DONE) or held is None:
                raise _forbid(f"a worker may only move its own tasks on ({key[:24]!r})")
            # The owner may set cancel/ack while the copy is on its way: not the mover's doing.
            _unchanged_except(plain_fields(held), fields, set(WORKER_FIELDS | CLIENT_FIELDS), key)
            _dimensions_kept(held, fields.get(c.F_DIMENSIONS), key)
        for place, names in changes.fields.items():
            if place[1] not in held_before and place not in changes.written:
                raise _forbid(f"task {place[1][:24]!r} is not assigned to you")
            if not names <= WORKER_FIELDS:
                raise _forbid(f"a worker may not set {min(names - WORKER_FIELDS)!r}")
            held = held_before.get(place[1])
            if c.F_DIMENSIONS in names and place not in changes.written and held is not None:
                _dimensions_kept(held, _ABSENT, place[1])
        for place in changes.texts:
            task = place[1]
            if task not in held_before and place not in changes.written:
                raise _forbid(f"task {task[:24]!r} is not assigned to you")

    # -- broker ---------------------------------------------------------------------------

    def _broker(self, changes: UpdateChanges) -> None:
        board = self._board()
        if changes.texts:
            raise _forbid("a broker writes no output")
        for (_, key), fields in changes.written.items():
            column = board.locate(key)
            if column is None:
                raise _forbid(f"a broker creates no task ({key[:24]!r})")
            before = plain_fields(board.column_map(column)[key])
            # `enriching` too: finishing a task cancelled mid-pipeline drops the marker.
            _unchanged_except(
                before, fields, set(BROKER_FIELDS | CLIENT_FIELDS | {c.F_OUTPUT, c.F_ENRICHING}), key
            )
        for names in changes.fields.values():
            if not names <= BROKER_FIELDS:
                raise _forbid(f"a broker may not set {min(names - BROKER_FIELDS)!r}")


def _entry(board: BoardDoc, column: str, task_id: str) -> Map[Any] | None:
    entry = read_field(board.column_map(Column(column)), task_id)
    return entry if isinstance(entry, Map) else None


_ABSENT = object()  # a value no field holds


def _dimensions_kept(held: Map[Any], written: object, task_id: str) -> None:
    """Refuse a worker's `dimensions` other than those the embed task asked for (it writes
    the vectors' length only where the request named none)."""
    asked = read_field(held, c.F_DIMENSIONS)
    if asked is not None and written != asked:
        raise _forbid(f"task {task_id[:24]!r} asked for {asked!r} dimensions")


def _unchanged_except(
    before: dict[str, Any], after: dict[str, Any], writable: set[str], task_id: str
) -> None:
    """Refuse a copy that changed any field its writer may not write."""
    for name in (set(before) | set(after)) - writable:
        if before.get(name) != after.get(name):
            raise _forbid(f"field {name!r} of task {task_id[:24]!r} is not yours to change")
