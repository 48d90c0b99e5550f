"""Which workers may be given new tasks, judged by what they did with the tasks they were given:
pure code, no document, no clock of its own (times are seconds of a monotonic clock).

Awareness is a claim, not a proof: anybody can announce a ready worker with a thousand slots
and never start anything, and a real worker can hang before it starts. So slots count only
for a worker that has shown it starts what it is given:

- a worker this broker has not seen start a task yet is on **probation**: it may hold at most
  `probation_tasks` unstarted tasks (in `prepared`) at a time, whatever slots it announces;
- a worker that let a task's start deadline pass is in **backoff**: no new task for
  `backoff_s`, doubling with each further timeout (at most `backoff_max_s`); then it is on
  probation again;
- starting a task (moving it out of `prepared`) makes a worker **proven**: its free slots
  count in full, and its backoff starts over.

A fake worker therefore holds at most one task at a time, for one start deadline each, less and
less often; the scheduler also serves proven workers first (`broker.scheduler.plan`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum


class Standing(str, Enum):
    """How far the broker trusts a worker's announced slots."""

    PROVEN = "proven"  # started a task since the broker knows it: every free slot counts
    PROBATION = "probation"  # new, or out of backoff: at most `probation_tasks` unstarted
    BACKOFF = "backoff"  # let a start deadline pass: nothing new until the backoff ends


@dataclass(frozen=True)
class HealthPolicy:
    probation_tasks: int = 1  # unstarted tasks a worker on probation may hold
    backoff_s: float = 5.0  # no new task this long after a start timeout; doubles for each more
    backoff_max_s: float = 300.0

    def backoff(self, timeouts: int) -> float:
        """The backoff after `timeouts` start timeouts in a row (>= 1)."""
        return float(min(self.backoff_s * 2 ** min(max(0, timeouts - 1), 62), self.backoff_max_s))


@dataclass
class _Record:
    proven: bool = False
    timeouts: int = 0  # start timeouts since the worker last started a task
    blocked_until: float = 0.0


class WorkerHealth:
    """The standing of each worker id, from the starts and start timeouts the broker saw."""

    def __init__(self, policy: HealthPolicy | None = None) -> None:
        self.policy = policy or HealthPolicy()
        self._records: dict[str, _Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    def started(self, worker_id: str) -> None:
        """`worker_id` started a task: proven, its backoff forgotten."""
        record = self._records.setdefault(worker_id, _Record())
        record.proven, record.timeouts, record.blocked_until = True, 0, 0.0

    def timed_out(self, worker_id: str, now: float) -> float:
        """`worker_id` let a task's start deadline pass at `now`: back on probation after a
        backoff; returns the backoff (s)."""
        record = self._records.setdefault(worker_id, _Record())
        record.proven = False
        record.timeouts += 1
        backoff = self.policy.backoff(record.timeouts)
        record.blocked_until = now + backoff
        return backoff

    def standing(self, worker_id: str, now: float) -> Standing:
        record = self._records.get(worker_id)
        if record is None:
            return Standing.PROBATION
        if record.blocked_until > now:
            return Standing.BACKOFF
        return Standing.PROVEN if record.proven else Standing.PROBATION

    def limits(self, worker_ids: Iterable[str], unstarted: Mapping[str, int], now: float) -> dict[str, int]:
        """How many new tasks each of `worker_ids` may be given now, for those not proven
        (`unstarted`: its tasks in `prepared`); a proven worker is not listed (its free slots
        are its limit)."""
        limits: dict[str, int] = {}
        for worker_id in worker_ids:
            standing = self.standing(worker_id, now)
            if standing is Standing.BACKOFF:
                limits[worker_id] = 0
            elif standing is Standing.PROBATION:
                limits[worker_id] = max(0, self.policy.probation_tasks - unstarted.get(worker_id, 0))
        return limits

    def forget(self, present: Collection[str], now: float) -> None:
        """Drop what is known of workers no longer present, unless they are in backoff (a
        worker that leaves and comes back under the same id does not shed its backoff).
        Keeps the records bounded by the workers present and those recently timed out."""
        gone = [
            worker_id for worker_id, record in self._records.items()
            if worker_id not in present and record.blocked_until <= now
        ]
        for worker_id in gone:
            del self._records[worker_id]
