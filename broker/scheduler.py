"""Which queued task goes to which worker: pure code, no document, no socket.

Order: requested model must match; then priority (higher first), then oldest first, then id.
A task goes to the matching worker with the most free slots, so load spreads evenly; but a
worker the broker does not trust yet (`broker.health`: on probation or in backoff) has a limit
on new tasks, and gets one only when no trusted worker can take it, so that a worker that
merely announces slots cannot draw tasks away from workers that run them.
"""

from __future__ import annotations

import heapq
from collections.abc import Generator, Mapping
from contextlib import closing
from dataclasses import dataclass, field

from awareness.states import WorkerPresence, WorkerState


@dataclass(frozen=True, order=True)
class QueuedTask:
    """A task waiting in `todo`, ordered as it should be served."""

    sort_key: tuple[float, float, str]
    id: str
    model: str
    not_before: float = field(default=0.0, compare=False)  # ms: a retry waits out its backoff

    @classmethod
    def make(
        cls, task_id: str, model: str, priority: float, created_at: float, *, not_before: float = 0.0
    ) -> QueuedTask:
        return cls((-priority, created_at, task_id), task_id, model, not_before)

    @property
    def created_at(self) -> float:
        return self.sort_key[1]


class TodoQueue:
    """The queued tasks in service order, updated incrementally (a heap, lazily pruned)."""

    def __init__(self) -> None:
        self._heap: list[QueuedTask] = []
        self._live: dict[str, QueuedTask] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._live

    def add(self, task: QueuedTask) -> None:
        self._live[task.id] = task
        heapq.heappush(self._heap, task)

    def get(self, task_id: str) -> QueuedTask | None:
        return self._live.get(task_id)

    def ids(self) -> list[str]:
        return list(self._live)

    def next_retry(self, now: float) -> float | None:
        """The earliest `not_before` still in the future (ms), if any task waits for one."""
        waiting = [t.not_before for t in self._live.values() if t.not_before > now]
        return min(waiting) if waiting else None

    def discard(self, task_id: str) -> None:
        self._live.pop(task_id, None)

    def clear(self) -> None:
        self._heap.clear()
        self._live.clear()

    def ordered(self) -> Generator[QueuedTask, None, None]:
        """Live tasks in service order; stops cheaply when the caller stops iterating."""
        popped: list[QueuedTask] = []
        try:
            while self._heap:
                task = heapq.heappop(self._heap)
                if self._live.get(task.id) is not task:
                    continue  # removed or replaced since it was pushed
                popped.append(task)
                yield task
        finally:
            for task in popped:
                heapq.heappush(self._heap, task)


def eligible(worker: WorkerPresence) -> bool:
    return worker.state is not WorkerState.DRAINING and worker.slots > 0


def free_slots(
    workers: list[WorkerPresence], load: dict[str, int], limits: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Free slots per eligible worker that has any; `load` is tasks held per worker, `limits`
    the most new tasks a worker not trusted yet may be given (others are not listed)."""
    free = {w.id: w.slots - load.get(w.id, 0) for w in workers if eligible(w)}
    if limits:
        free = {wid: min(n, limits[wid]) if wid in limits else n for wid, n in free.items()}
    return {wid: n for wid, n in free.items() if n > 0}


def plan(
    queue: TodoQueue, workers: list[WorkerPresence], load: dict[str, int], now: float = 0.0,
    limits: Mapping[str, int] | None = None,
) -> list[tuple[str, str]]:
    """Assignments `(task id, worker id)` for this round; `load` is tasks held per worker,
    `now` the time (ms) against which retry backoffs are checked, `limits` the most new tasks
    each worker not trusted yet may be given (a worker not listed is trusted: its free slots
    are its limit). A task goes to a trusted worker whenever one can take it."""
    free = free_slots(workers, load, limits)
    if not free:
        return []
    by_id = {w.id: w for w in workers}
    untrusted = frozenset(limits or ())
    assignments: list[tuple[str, str]] = []
    with closing(queue.ordered()) as ordered:
        for task in ordered:
            if task.not_before > now:
                continue
            if _assign(task, free, by_id, untrusted, assignments):
                break
    return assignments


def _assign(
    task: QueuedTask,
    free: dict[str, int],
    by_id: dict[str, WorkerPresence],
    untrusted: frozenset[str],
    assignments: list[tuple[str, str]],
) -> bool:
    """Assign one task if a worker can take it; True when no free slot is left."""
    candidates = [wid for wid in free if by_id[wid].serves(task.model)]
    if not candidates:
        return False
    chosen = max(candidates, key=lambda wid: (wid not in untrusted, free[wid], wid))
    assignments.append((task.id, chosen))
    free[chosen] -= 1
    if free[chosen] == 0:
        del free[chosen]
    return not free
