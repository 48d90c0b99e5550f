"""Which queued task goes to which worker: pure code, no document, no socket.

Order: requested kind and model must match (a chat never goes to an embedding worker, nor an
embed task to a chat worker; a task no present worker serves waits); then priority (higher first), then oldest first, then id.
A worker the broker does not trust yet (`broker.health`: on probation or in backoff) has a
limit on new tasks, and gets one only when no trusted worker can take it, so that a worker
that merely announces slots cannot draw tasks away from workers that run them. Among the
workers that can take a task, `broker.routing` chooses: the one that holds the longest prefix
of its chat in its prompt cache, unless load is uneven; else the one with the most free slots,
so that load spreads evenly.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field

from awareness.states import WorkerPresence, WorkerState
from broker.routing import Candidate, RoutingPolicy, choose
from kanbanmesh.board.schema import TaskKind

# A queued task's prefix hashes (`kanbanmesh.board.prefix`), by task id: read from the board
# only for a task that a worker's advertised cache could match.
PrefixSource = Callable[[str], Sequence[str]]


@dataclass(frozen=True, order=True)
class QueuedTask:
    """A task waiting in `todo`, ordered as it should be served."""

    sort_key: tuple[float, float, str]
    id: str
    model: str
    not_before: float = field(default=0.0, compare=False)  # ms: a retry waits out its backoff
    kind: TaskKind = field(default=TaskKind.CHAT, compare=False)

    @classmethod
    def make(
        cls, task_id: str, model: str, priority: float, created_at: float, *, not_before: float = 0.0,
        kind: TaskKind = TaskKind.CHAT,
    ) -> QueuedTask:
        return cls((-priority, created_at, task_id), task_id, model, not_before, kind)

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
    limits: Mapping[str, int] | None = None, *, prefixes: PrefixSource | None = None,
    routing: RoutingPolicy | None = None,
) -> list[tuple[str, str]]:
    """Assignments `(task id, worker id)` for this round; `load` is tasks held per worker,
    `now` the time (ms) against which retry backoffs are checked, `limits` the most new tasks
    each worker not trusted yet may be given (a worker not listed is trusted: its free slots
    are its limit). A task goes to a trusted worker whenever one can take it; among those that
    can, `broker.routing` chooses by `routing`, with the task's prefix hashes from `prefixes`
    (without it, caches are not looked at)."""
    free = free_slots(workers, load, limits)
    if not free:
        return []
    round_ = _Round(
        free, dict(load), {w.id: w for w in workers}, frozenset(limits or ()),
        prefixes or _no_prefixes, routing or RoutingPolicy(),
    )
    with closing(queue.ordered()) as ordered:
        for task in ordered:
            if task.not_before > now:
                continue
            if round_.assign(task):
                break
    return round_.assignments


def _no_prefixes(task_id: str) -> Sequence[str]:
    return ()


def _no_prefixes_of_task() -> Sequence[str]:
    return ()


@dataclass
class _Round:
    """One planning round: what is left of each worker's free slots as tasks are given out."""

    free: dict[str, int]
    held: dict[str, int]  # tasks per worker, counting those given this round
    by_id: dict[str, WorkerPresence]
    untrusted: frozenset[str]
    prefixes: PrefixSource
    routing: RoutingPolicy
    assignments: list[tuple[str, str]] = field(default_factory=list)

    def assign(self, task: QueuedTask) -> bool:
        """Assign one task if a worker can take it; True when no free slot is left."""
        candidates = [wid for wid in self.free if self.by_id[wid].serves(task.model, task.kind)]
        if not candidates:
            return False
        trusted = [wid for wid in candidates if wid not in self.untrusted]
        chosen = choose(
            [Candidate(wid, self.free[wid], self.held.get(wid, 0), self.by_id[wid].cache)
             for wid in trusted or candidates],
            # An embed task has no turns: no prompt cache holds any of it.
            (lambda: self.prefixes(task.id)) if task.kind is TaskKind.CHAT else _no_prefixes_of_task,
            self.routing,
        )
        self.assignments.append((task.id, chosen))
        self.held[chosen] = self.held.get(chosen, 0) + 1
        self.free[chosen] -= 1
        if self.free[chosen] == 0:
            del self.free[chosen]
        return not self.free
