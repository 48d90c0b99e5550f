"""The small failed entry that replaces one nobody can act on.

The server fails the invalid entries it finds in a board loaded from disk
(`kanbanmesh/server/quarantine.py`), the broker those it meets on its board (`broker.repair`),
a worker a task it cannot run: each writes this entry in `done`, copying none of the old
entry's values but its id, its owner if a string, and its creation time if a finite number,
so that no reader meets the bad values again and the owner learns what became of the task.
"""

from __future__ import annotations

import math
import re
from typing import Any

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import now_ms
from kanbanmesh.board.schema import TASK_ID_PATTERN, TaskStatus

INVALID_TASK = "invalid_task"  # `error.code` of a task failed for its entry
_TASK_ID = re.compile(TASK_ID_PATTERN)
_MAX_OWNER = 200  # an owner longer than any token subject is not copied
_MAX_MESSAGE = 500


def is_task_id(key: str) -> bool:
    """Whether `key` may name a task (an entry under any other key is only deleted)."""
    return _TASK_ID.fullmatch(key) is not None


def invalid_entry(task_id: str, owner: object, created_at: object, message: str) -> dict[str, Any]:
    """The entry that replaces an invalid one in `done`: failed, `invalid_task`. An empty
    `prompt` keeps it a valid request for readers that check one."""
    finished = now_ms()
    created = (
        float(created_at)
        if isinstance(created_at, int | float) and not isinstance(created_at, bool)
        and math.isfinite(created_at) and 0 <= created_at < 1e15
        else finished
    )
    return {
        c.F_ID: task_id,
        c.F_OWNER: owner if isinstance(owner, str) and len(owner) <= _MAX_OWNER else "",
        c.F_PROMPT: "",
        c.F_CREATED_AT: created,
        c.F_STATUS: TaskStatus.FAILED.value,
        c.F_RESULT: "",
        c.F_ERROR: {"code": INVALID_TASK, "message": message[:_MAX_MESSAGE]},
        c.F_FINISHED_AT: finished,
    }
