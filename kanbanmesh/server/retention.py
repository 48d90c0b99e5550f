"""When each finished task leaves the live board: after the retention time, or at once when
its owner acknowledges it (`ack: true` on the `done` entry).

Kept by an observer on `done`, as a heap of due times, so that finding what is due costs
nothing in proportion to the size of the board.
"""

from __future__ import annotations

import heapq
from typing import Any

from pycrdt import Map, Subscription

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.board.events import (
    change_value,
    event_keys,
    event_path,
    is_map_event,
    observe_events,
)
from kanbanmesh.board.reads import read_field
from kanbanmesh.board.transitions import Column


class RetentionIndex:
    """Due times of the entries in `done` (ms since the epoch)."""

    def __init__(self, board: BoardDoc, retention_s: float) -> None:
        self._board = board
        self._retention_ms = retention_s * 1000.0
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}  # task id -> its current due time
        self._done: Map[Any] = board.column_map(Column.DONE)
        self._sub: Subscription | None = None

    def attach(self) -> None:
        for task_id, entry in self._board.entries(Column.DONE):
            self._schedule(task_id, entry)
        self._sub = observe_events(self._done, self._on_events, deep=True)

    def detach(self) -> None:
        if self._sub is not None:
            self._done.unobserve(self._sub)
            self._sub = None

    def due(self, now_ms: float, limit: int) -> list[str]:
        """Up to `limit` task ids due by `now_ms` and still in `done`."""
        found: list[str] = []
        while self._heap and self._heap[0][0] <= now_ms and len(found) < limit:
            at, task_id = heapq.heappop(self._heap)
            if self._due.get(task_id) == at:
                del self._due[task_id]
                found.append(task_id)
        return found

    def _schedule(self, task_id: str, entry: Any, *, now: bool = False) -> None:
        if not isinstance(entry, Map):
            return
        if now or read_field(entry, c.F_ACK):
            at = 0.0
        else:
            finished = read_field(entry, c.F_FINISHED_AT)
            at = (float(finished) if isinstance(finished, int | float) else 0.0) + self._retention_ms
        self._due[task_id] = at
        heapq.heappush(self._heap, (at, task_id))

    def _on_events(self, events: list[Any]) -> None:
        for event in events:
            path = event_path(event)
            keys = event_keys(event) if is_map_event(event) else {}
            if not path:
                for key, change in keys.items():
                    if change.get("action") == "delete":
                        self._due.pop(key, None)
                    else:
                        self._schedule(key, change_value(change, self._done))
            elif len(path) == 1 and c.F_ACK in keys and self._done.get(str(path[0])) is not None:
                self._schedule(str(path[0]), self._done.get(str(path[0])), now=True)
