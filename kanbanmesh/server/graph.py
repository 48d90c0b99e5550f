"""Task graphs on a room: a task that names `after` waits in `todo` until its parents ended.

The rules (docs/protocol.md, "Task graphs"; the bookkeeping is kanbanmesh/board/graph.py):

- A task that names `after` is marked like a task the pre-inference pipeline works on
  (`enriching: ["after", ...]`, kanbanmesh/server/enrichment.py): no broker queues it, a cancel
  still finishes it. The mark comes with its creation, before any broker sees it.
- Each parent must exist when the child is created, on the live board or in the archive (a
  child may come in the same update as its parents), and belong to the child's owner. A parent
  that does not, fails the child (`dependency_failed`, "no task ... of this owner": a task of
  another owner is not told apart from none). So a child can only wait for tasks created before
  it or with it, and the only cycles possible are within one update: those fail at once.
- Every parent succeeded: the results the child's text refers to are written into its
  `after_results`, the `after` mark goes, and the task goes on through the pipeline to the
  brokers. A parent failed: the child fails; a parent was cancelled: the child is cancelled;
  both with the error code `dependency_failed`, and the child's own children follow.
- Server restart: the tasks still marked are held again, their parents looked up afresh.

A parent's end is learnt from the room's finished listener (each entry entering `done`), so a
parent costs its own children only; looking a parent up in the archive runs in a thread.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus as StartStatus
from pycrdt import Map

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.graph import DEPENDENCY_FAILED, Decision, DependencyIndex, Verdict, cyclic
from kanbanmesh.board.reads import read_field
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import TaskStatus
from kanbanmesh.board.templates import request_texts, result_refs
from kanbanmesh.board.transitions import Column
from kanbanmesh.server.room import BoardRoom

log = logging.getLogger(__name__)

AFTER = "after"  # the name a held task carries in its `enriching` mark

# Released: the task's parents all succeeded; `results` are those its text refers to.
Release = Callable[[str, dict[str, str]], None]

_ENDED = {status.value: status for status in TaskStatus}


def parents_of(fields: Mapping[str, Any]) -> list[str]:
    """The ids an entry names in `after` (checked by the schema when it was written)."""
    after = fields.get(c.F_AFTER)
    return [p for p in after if isinstance(p, str)] if isinstance(after, list) else []


class GraphGate:
    """Holds the tasks of one room that wait for others, and lets them go (`release`) or ends
    them as their parents end."""

    def __init__(self, room: BoardRoom, release: Release) -> None:
        self._room = room
        self._release = release
        self._index = DependencyIndex()
        self._owners: dict[str, str] = {}  # waiting task -> its owner
        self._lookups: set[tuple[str, str]] = set()  # (child, parent) looked up in the archive
        # Work for `run`: (child, parent) pairs to look up in the archive, and the fields of
        # tasks that ended (one item per task waited for: bounded by the tasks in `todo`).
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, str] | dict[str, Any]](math.inf)

    async def run(self, *, task_status: StartStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Learn of parents ending and look up archived ones until cancelled."""
        with self._send, self._receive, self._room.on_finished(self._finished):
            task_status.started()
            async for item in self._receive:
                try:
                    if isinstance(item, dict):
                        self._on_ended(item)
                    else:
                        await self._look_up(*item)
                except Exception:  # one task's bookkeeping must not stop every other's
                    log.exception("board %s: task graph step failed", self._room.name)

    def hold(self, tasks: Mapping[str, Mapping[str, Any]]) -> None:
        """Hold the marked tasks `tasks` (id -> fields, created together) until their parents
        end; called on the event loop as they are created (or found marked at start)."""
        if not tasks:
            return
        stuck = cyclic({task_id: parents_of(fields) for task_id, fields in tasks.items()})
        decisions: list[Decision] = []
        ended: list[tuple[str, str, TaskStatus, str | None]] = []
        unknown: list[tuple[str, str]] = []
        for task_id, fields in tasks.items():
            parents = parents_of(fields)
            owner = str(fields.get(c.F_OWNER) or "")
            refs = result_refs(request_texts(fields.get(c.F_MESSAGES), fields.get(c.F_PROMPT))) & set(parents)
            self._owners[task_id] = owner
            decisions += self._index.wait(task_id, parents, refs)
            for parent in parents:
                found = self._live(parent)
                if found is None:
                    self._lookups.add((task_id, parent))
                    self._send.send_nowait((task_id, parent))  # in the archive, or nowhere
                elif str(found[1].get(c.F_OWNER) or "") != owner:
                    unknown.append((task_id, parent))
                elif found[0] is Column.DONE:
                    ended.append((task_id, parent, *_outcome(found[1])))
        for task_id in sorted(stuck):
            decisions += self._index.fail(task_id, "it waits for itself (a cycle of `after`)")
        for task_id, parent in unknown:
            decisions += self._index.fail(task_id, _unknown(parent))
        for task_id, parent, status, result in ended:
            decisions += self._index.ended_for(task_id, parent, status, result)
        self._apply(decisions)

    # -- parents ending --------------------------------------------------------------

    def _finished(self, fields: dict[str, Any]) -> None:
        # The room's finished listener: runs after the update's messages went out.
        task_id = fields.get(c.F_ID)
        if isinstance(task_id, str) and (task_id in self._index or self._index.children_of(task_id)):
            self._send.send_nowait(fields)

    def _on_ended(self, fields: dict[str, Any]) -> None:
        task_id = str(fields.get(c.F_ID))
        status, result = _outcome(fields)
        decisions = []
        for child in self._index.children_of(task_id):
            if (child, task_id) not in self._lookups:  # a task created after its child: not it
                decisions += self._index.ended_for(child, task_id, status, result)
        self._owners.pop(task_id, None)
        self._index.forget(task_id)  # it ended: it waits no more (cancelled while it waited)
        self._apply(decisions)

    async def _look_up(self, child: str, parent: str) -> None:
        """A parent that was not on the live board when its child came: in the archive (it
        ended long ago), or no task at all."""
        try:
            if parent not in self._index.waiting_for(child):
                return  # decided meanwhile
            entry = await self._room.archive.get(self._room.name, parent)
        finally:
            self._lookups.discard((child, parent))
        if entry is None or str(entry.get(c.F_OWNER) or "") != self._owners.get(child):
            self._apply(self._index.fail(child, _unknown(parent)))
        else:
            self._apply(self._index.ended_for(child, parent, *_outcome(entry)))

    # -- decisions ---------------------------------------------------------------------

    def _apply(self, decisions: Iterable[Decision]) -> None:
        ends: list[Decision] = []
        for decision in decisions:
            self._owners.pop(decision.task_id, None)
            if decision.verdict is Verdict.READY:
                results = self._index.results(decision.task_id)
                self._index.forget(decision.task_id)
                self._release(decision.task_id, results)
            else:
                ends.append(decision)
        if ends:
            self._room.server_write(lambda board: _end(board, ends))

    def _live(self, task_id: str) -> tuple[Column, dict[str, Any]] | None:
        """Where `task_id` is on the live board, and what a child reads of it: its owner, and
        once done its status and result. Never the whole entry: 64 parents a child, each
        named by every child of one update, would cost a read of each parent's request (up to
        `max_task_bytes`) per child."""
        board = self._room.board
        column = board.locate(task_id)
        if column is None:
            return None
        with board.doc.transaction():
            entry = read_field(board.column_map(column), task_id)
            if not isinstance(entry, Map):
                return None
            names = (c.F_OWNER, c.F_STATUS, c.F_RESULT) if column is Column.DONE else (c.F_OWNER,)
            return column, {name: read_field(entry, name) for name in names}


def _unknown(parent: str) -> str:
    return f"no task {parent!r} of this owner on the board (a parent must exist before its child, or come with it)"


def _outcome(fields: Mapping[str, Any]) -> tuple[TaskStatus, str | None]:
    """How a finished entry ended, and its result; an entry without a valid status counts as
    failed."""
    status = _ENDED.get(str(fields.get(c.F_STATUS)), TaskStatus.FAILED)
    result = fields.get(c.F_RESULT)
    return status, result if isinstance(result, str) else None


def _end(board: BoardDoc, decisions: list[Decision]) -> None:
    """Fail or cancel the held tasks `decisions` name, those still held."""
    todo = board.column_map(Column.TODO)
    for decision in decisions:
        entry = todo.get(decision.task_id)
        if not isinstance(entry, Map) or AFTER not in (read_field(entry, c.F_ENRICHING) or ()):
            continue  # cancelled by its owner (the broker finished it) or gone meanwhile
        status = TaskStatus.CANCELLED if decision.verdict is Verdict.CANCELLED else TaskStatus.FAILED
        board.move(
            decision.task_id, Column.TODO, Column.DONE, PeerRole.BROKER,
            drop_fields=frozenset({c.F_ENRICHING}),
            set_fields={
                c.F_STATUS: status.value, c.F_RESULT: "", c.F_FINISHED_AT: now_ms(),
                c.F_ERROR: {"code": DEPENDENCY_FAILED, "message": decision.reason},
            },
        )
