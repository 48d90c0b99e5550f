"""A board room's settings and counters (`kanbanmesh.server.room`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.server.quota import QuotaLimits


@dataclass(frozen=True)
class RoomSettings:
    keepalive_s: float = 10.0  # y-websocket reconnects after 30 s without a message
    awareness_timeout_s: float = 30.0  # as Yjs: a state not renewed for this long is gone
    compact_every: int = 5000  # persisted rows of one board before they are squashed
    lazy_s: float = 0.05  # how long other people's tasks' updates may wait to be sent
    # For a connection that announced only workers: it shows nobody anything, and needs other
    # tasks' news only to keep its replica whole (its own tasks' news is never lazy).
    worker_lazy_s: float = 0.25
    retention_s: float = 600.0  # finished tasks stay on the live board this long
    archive_batch: int = 2000  # most tasks archived in one round (one a second)
    # A new generation of the document once this many tasks have left the board (when no
    # task is running; at 4x this many even then, see server/rotation.py).
    rotate_after: int = 10_000
    # And on a board idle this long, once this many tasks have left it: at rest, a board
    # that ran a million tasks weighs what a new one does.
    rotate_idle_s: float = 60.0
    rotate_idle_min: int = 100
    default_max_attempts: int = 3  # the broker's, for tasks a forced rotation puts back
    limits: EntryLimits = field(default_factory=EntryLimits)
    quota: QuotaLimits = field(default_factory=QuotaLimits)


@dataclass
class RoomStats:
    updates_applied: int = 0
    updates_refused: int = 0
    archived: int = 0
