"""Per-owner limits on a board: open tasks at once, and new tasks per minute.

Open tasks are those in `todo`, `prepared` or `doing`, indexed by owner from the room's column
observers. An update that would take an owner past a limit is refused as a whole (4429), the
same way as any other refused update: nothing of it is applied.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.board.transitions import Column
from kanbanmesh.server.validation import UpdateChanges, UpdateRefused


@dataclass(frozen=True)
class QuotaLimits:
    max_open_tasks: int = 1000  # per owner, on one board
    max_submissions_per_minute: int = 600  # per owner, on one board


class OwnerQuota:
    """Open tasks and recent submissions of each owner of one board."""

    def __init__(self, limits: QuotaLimits) -> None:
        self._limits = limits
        self._open: dict[str, set[str]] = collections.defaultdict(set)
        self._owner_of: dict[str, str] = {}
        self._recent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def rebuild(self, board: BoardDoc) -> None:
        self._open.clear()
        self._owner_of.clear()
        for column in (Column.TODO, Column.PREPARED, Column.DOING):
            for task_id, entry in board.entries(column):
                self.opened(task_id, entry.get(c.F_OWNER))

    def opened(self, task_id: str, owner: Any) -> None:
        owner = str(owner or "")
        self._open[owner].add(task_id)
        self._owner_of[task_id] = owner

    def closed(self, task_id: str) -> None:
        owner = self._owner_of.pop(task_id, None)
        if owner is not None:
            self._open[owner].discard(task_id)

    def admit(self, changes: UpdateChanges, now_s: float) -> None:
        """Refuse (4429) an update whose new tasks take an owner past a limit."""
        self.admit_new(collections.Counter(
            str(fields.get(c.F_OWNER) or "")
            for (column, key), fields in changes.written.items()
            if column == c.TODO and key not in self._owner_of and isinstance(fields, dict)
        ), now_s)

    def admit_new(self, new: dict[str, int], now_s: float) -> None:
        """Count `new[owner]` new tasks for each owner, or refuse them all (4429)."""
        for owner, count in new.items():
            who = repr(owner[:24]) if owner else "(no owner)"
            if len(self._open[owner]) + count > self._limits.max_open_tasks:
                raise UpdateRefused(
                    c.CLOSE_TOO_MANY,
                    f"too many open tasks for owner {who}: limit {self._limits.max_open_tasks}",
                )
            recent = self._recent[owner]
            while recent and recent[0] <= now_s - 60.0:
                recent.popleft()
            if len(recent) + count > self._limits.max_submissions_per_minute:
                raise UpdateRefused(
                    c.CLOSE_TOO_MANY,
                    f"too many submissions for owner {who}: limit "
                    f"{self._limits.max_submissions_per_minute} a minute",
                )
        for owner, count in new.items():
            self._recent[owner].extend([now_s] * count)
