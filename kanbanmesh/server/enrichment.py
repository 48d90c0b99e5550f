"""Running the pre-inference middlewares on a room's new tasks, before they may be assigned.

The marker: when a task is created (by a peer's update or a write of the server's own), the
room calls `Enricher.admit` synchronously, before any change listener (the embedded broker)
runs. If any middleware applies to the task, `admit` writes `enriching: [names]` into its
entry; brokers do not queue an entry that carries `enriching` (broker/tracker.py). The
middlewares then run in a task of their own, off the event loop (they use threads for SQLite,
embedding and faiss); their fields and the removal of `enriching` are written in one server
write, whose change listeners let the embedded broker assign the task at once. A standalone
broker gets the marker with the task: the room's outbox merges the two updates into one
message.

- No middleware applies: nothing is written; the task costs one `applies` call per middleware.
- A middleware fails (or runs past `timeout_s`): the task goes to `done`, `failed`, with the
  middleware's error code (`collection_not_found`, `middleware_timeout`, ...).
- Cancelled while enriching: the broker finishes it as any queued task (`cancel` is honoured
  whether or not the task is queued); the pipeline notices and writes nothing.
- Server restart mid-pipeline: the marker is in the stored document; `run` starts over with
  every entry that still carries it (middlewares rewrite their fields whole, so a repeat is
  harmless).
- A task that names `after` (a task graph, kanbanmesh/server/graph.py) is marked `after`
  first, and waits for its parents outside the pipeline's limiter and timeout; once they all
  succeeded its middlewares run on its text with their results put in.
- A client cannot skip the pipeline by writing `enriching` itself (with auth on it may not
  write it at all; without auth `admit` rewrites it from what applies).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskStatus
from pycrdt import Map

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.graph import DEPENDENCY_TOO_LARGE
from kanbanmesh.board.reads import plain_fields, read_entry, read_field
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import TaskStatus as Status
from kanbanmesh.board.templates import request_texts, resolved_fields, resolved_length
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import MiddlewareError
from kanbanmesh.pipeline.base import Middleware, PendingTask
from kanbanmesh.server.graph import AFTER, GraphGate, parents_of
from kanbanmesh.server.room import BoardRoom
from kanbanmesh.server.validation import UpdateRefused, check_entry

log = logging.getLogger(__name__)


class Enricher:
    """The pipeline of one room: `admit` marks, `run` enriches."""

    def __init__(
        self, room: BoardRoom, middlewares: Sequence[Middleware], *, timeout_s: float = 120.0,
        concurrency: int = 4,
    ) -> None:
        self._room = room
        self._middlewares = list(middlewares)
        self._timeout_s = timeout_s
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._send, self._receive = anyio.create_memory_object_stream[str](math.inf)
        self._results: dict[str, dict[str, str]] = {}  # released by the gate, not enriched yet
        self._gate = GraphGate(room, self._released)
        self.enriched = 0  # tasks whose middlewares finished (for tests and stats)
        self.failed = 0

    def admit(self, created: Iterable[str]) -> None:
        """Mark the just-created tasks some middleware applies to, or that wait for others
        (`after`: kanbanmesh/server/graph.py), and queue them; called by the room inside its
        update handling, before its change listeners run."""
        todo = self._room.board.column_map(Column.TODO)
        marks: dict[str, list[str]] = {}
        held: dict[str, dict[str, Any]] = {}
        for task_id in created:
            if not self._middlewares and not _may_wait(todo.get(task_id)):
                continue  # nothing here can apply to it
            # Its plain fields, in one call into Yrs: each middleware reads a field or two, and
            # through pycrdt's `Map.get` every read cost more than this whole one.
            fields = read_entry(todo, task_id)
            if not isinstance(fields, dict):
                continue  # gone already, or no entry (NotAMap)
            names = [m.name for m in self._middlewares if m.applies(fields)]
            if parents_of(fields):
                names.insert(0, AFTER)
                held[task_id] = fields
            if names or fields.get(c.F_ENRICHING) is not None:
                marks[task_id] = names
        if not marks:
            return
        with self._room.doc.transaction():
            for task_id, names in marks.items():
                if names:
                    todo[task_id][c.F_ENRICHING] = names
                else:  # written by a client without auth: it is not the client's to set
                    del todo[task_id][c.F_ENRICHING]
        for task_id, names in marks.items():
            if names and task_id not in held:
                self._send.send_nowait(task_id)
        self._gate.hold(held)

    def _released(self, task_id: str, results: dict[str, str]) -> None:
        """The graph gate let a task go (its parents all succeeded): on to the middlewares."""
        self._results[task_id] = results
        self._send.send_nowait(task_id)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Enrich queued tasks until cancelled; first those a restart left half done."""
        with self._send, self._receive:  # closed when the board is unloaded too
            async with anyio.create_task_group() as tg:
                await tg.start(self._gate.run)
                held: dict[str, dict[str, Any]] = {}
                for task_id, entry in self._room.board.entries(Column.TODO):
                    marked = entry.get(c.F_ENRICHING) if isinstance(entry, Map) else None
                    if isinstance(marked, list) and AFTER in marked:
                        held[task_id] = plain_fields(entry)
                    elif marked:
                        self._send.send_nowait(task_id)
                self._gate.hold(held)
                task_status.started()
                async for task_id in self._receive:
                    tg.start_soon(self._enrich, task_id)
                tg.cancel_scope.cancel()

    def _pending(self, task_id: str) -> Map[Any] | None:
        """The task's entry if it still waits for its middlewares (not cancelled, not gone)."""
        entry = self._room.board.column_map(Column.TODO).get(task_id)
        if not isinstance(entry, Map) or not entry.get(c.F_ENRICHING) or entry.get(c.F_CANCEL):
            return None
        return entry

    async def _enrich(self, task_id: str) -> None:
        async with self._limiter:
            # Taken first: a task cancelled or gone meanwhile must not leave them held.
            results = self._results.pop(task_id, None)
            entry = self._pending(task_id)
            if entry is None:
                return
            fields = plain_fields(entry)
            names = set(fields.get(c.F_ENRICHING) or [])
            written: dict[str, Any] = {}
            if AFTER in names:
                if results is None:
                    return  # still waiting for its parents (the gate sends it again)
                if results:
                    written[c.F_AFTER_RESULTS] = results
                    too_large = self._too_large(fields, results)
                    if too_large is not None:
                        self._room.server_write(lambda board: self._complete(board, task_id, {}, too_large))
                        return
                    # The middlewares see the text the model will (retrieval asks with it).
                    fields = {**fields, **resolved_fields(fields, results)}
            task = PendingTask(self._room.name, task_id, fields)
            error: dict[str, str] | None = None
            step = ""
            try:
                with anyio.fail_after(self._timeout_s):
                    for middleware in self._middlewares:
                        if middleware.name not in names:
                            continue
                        if self._pending(task_id) is None:
                            return  # cancelled or gone meanwhile: its result is not wanted
                        step = middleware.name
                        out = await middleware.enrich(task)
                        written.update(out)
                        task = task.with_fields(out)
            except MiddlewareError as exc:
                error = {"code": exc.code, "message": f"{step}: {exc.message}"}
            except TimeoutError:
                error = {"code": "middleware_timeout",
                         "message": f"{step}: did not finish within {self._timeout_s:g} s"}
            except Exception as exc:  # a middleware's bug fails its task, not the server
                log.exception("board %s: middleware %s failed on task %s", self._room.name, step, task_id)
                error = {"code": "middleware_failed", "message": f"{step}: {type(exc).__name__}: {exc}"}
            if error is None:
                error = self._over_limits(task_id, fields, written)
            self._room.server_write(lambda board: self._complete(board, task_id, written, error))

    def _too_large(self, fields: dict[str, Any], results: dict[str, str]) -> dict[str, str] | None:
        """The error of a task whose text, its references replaced, would be over the request
        limit: measured before anything is replaced (the replaced text could be thousands of
        times the size of the task)."""
        limit = self._room.limits.max_task_bytes
        length = resolved_length(request_texts(fields.get(c.F_MESSAGES), fields.get(c.F_PROMPT)), results)
        if length <= limit:
            return None  # characters: the bytes are measured once it is replaced
        return {"code": DEPENDENCY_TOO_LARGE, "message": f"the parents' results would make the request "
                f"{length} characters long, over the limit of {limit} bytes"}

    def _over_limits(self, task_id: str, fields: dict[str, Any], written: dict[str, Any]) -> dict[str, str] | None:
        """The pipeline's fields pass the checks a peer's write would: an entry they would
        take past the limits (a long history, many large chunks) fails instead."""
        enriched = {**fields, **written}
        enriched.pop(c.F_ENRICHING, None)
        try:
            check_entry(Column.TODO.value, task_id, enriched, self._room.limits)
        except UpdateRefused as refused:
            too_large = DEPENDENCY_TOO_LARGE if c.F_AFTER_RESULTS in written else "enrichment_too_large"
            return {"code": too_large if refused.code == c.CLOSE_TASK_TOO_LARGE
                    else "invalid_task", "message": refused.reason}
        return None

    def _complete(self, board: BoardDoc, task_id: str, written: dict[str, Any],
                  error: dict[str, str] | None) -> None:
        entry = board.column_map(Column.TODO).get(task_id)
        if not isinstance(entry, Map) or c.F_ENRICHING not in entry:
            return  # cancelled (the broker finished it) or replaced meanwhile
        if error is not None:
            self.failed += 1
            board.move(task_id, Column.TODO, Column.DONE, PeerRole.BROKER, drop_fields=frozenset({c.F_ENRICHING}),
                       set_fields={c.F_STATUS: Status.FAILED.value, c.F_ERROR: error, c.F_RESULT: "",
                                   c.F_FINISHED_AT: now_ms()})
            return
        for name, value in written.items():
            entry[name] = value
        del entry[c.F_ENRICHING]
        self.enriched += 1


def _may_wait(entry: object) -> bool:
    """Whether a new entry names `after` or carries a mark (two field reads)."""
    return isinstance(entry, Map) and (
        read_field(entry, c.F_AFTER) is not None or read_field(entry, c.F_ENRICHING) is not None
    )
