"""Watching `done` from one replica: every version of every finished entry, in order seen.

A task finished exactly once has one version. A second one means the entry in `done` was
written again after it was first seen there: another attempt, or another worker, finished it
too (a stale worker's late finish landing over a newer attempt's, say).

The replica should see every update on its own, not merged with the next: a peer that
announces itself as `admin` gets every update of the board at once (see the room's fan-out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pycrdt import Map, MapEvent, Subscription

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.board.events import event_keys
from kanbanmesh.board.transitions import Column

OBSERVER_PRESENCE = {c.A_ROLE: "admin", c.A_ID: "done-ledger", c.A_NAME: "done-ledger"}


@dataclass(frozen=True)
class Finish:
    """One version of a task's entry in `done`."""

    attempt: int
    worker: str
    status: str
    finished_at: float


@dataclass
class DoneLedger:
    board: BoardDoc
    finishes: dict[str, list[Finish]] = field(default_factory=dict)
    _sub: Subscription | None = None

    def __post_init__(self) -> None:
        done = self.board.column_map(Column.DONE)
        for task_id, entry in done.items():
            self._note(task_id, entry)
        self._sub = done.observe(self._on_event)

    def close(self) -> None:
        if self._sub is not None:
            self.board.column_map(Column.DONE).unobserve(self._sub)
            self._sub = None

    def finished(self, task_id: str) -> Finish | None:
        """The latest version seen of `task_id`'s done entry."""
        history = self.finishes.get(task_id)
        return history[-1] if history else None

    def doubled(self) -> dict[str, list[Finish]]:
        """Tasks whose done entry was written more than once."""
        return {task_id: history for task_id, history in self.finishes.items() if len(history) > 1}

    def _on_event(self, event: MapEvent) -> None:
        for task_id, change in event_keys(event).items():
            if change.get("action") != "delete":  # a deletion is retention, not a finish
                self._note(task_id, change.get("newValue"))

    def _note(self, task_id: str, entry: object) -> None:
        if not isinstance(entry, Map):
            return
        version = Finish(
            attempt=int(_number(entry.get(c.F_ATTEMPT))),
            worker=str(entry.get(c.F_WORKER) or ""),
            status=str(entry.get(c.F_STATUS) or ""),
            finished_at=_number(entry.get(c.F_FINISHED_AT)),
        )
        history = self.finishes.setdefault(task_id, [])
        if not history or history[-1] != version:
            history.append(version)


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
