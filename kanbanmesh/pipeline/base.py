"""The middleware seam: one Protocol, and the task as a middleware sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kanbanmesh.board import constants as c


class FieldReader(Protocol):
    """Read access to an entry's fields (a live `pycrdt.Map`, or a dict)."""

    def get(self, key: str, /) -> Any: ...


class Middleware(Protocol):
    """A step of the pre-inference pipeline."""

    @property
    def name(self) -> str:
        """Short stable name, written into the entry's `enriching` marker while it runs."""
        ...

    def applies(self, entry: FieldReader) -> bool:
        """Whether a new task needs this step. Called on the event loop for every new task:
        read a field or two, nothing more (tasks that need no middleware pay only this)."""
        ...

    async def enrich(self, task: PendingTask) -> dict[str, Any]:
        """The fields to write into the task's entry. Blocking work (SQLite, embedding, an
        index) goes to a thread. Raises `MiddlewareError` to fail the task with its code."""
        ...


@dataclass(frozen=True)
class PendingTask:
    """A task being enriched: its board and its entry's fields, with what the middlewares
    before this one wrote already applied."""

    board: str
    id: str
    fields: dict[str, Any]

    @property
    def owner(self) -> str:
        return str(self.fields.get(c.F_OWNER) or "")

    def question(self) -> str:
        """The text the task asks now: its last user turn, or its bare prompt."""
        messages = self.fields.get(c.F_MESSAGES)
        if isinstance(messages, list):
            for message in reversed(messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    return str(message.get("content") or "")
            return str(messages[-1].get("content") or "") if messages and isinstance(messages[-1], dict) else ""
        return str(self.fields.get(c.F_PROMPT) or "")

    def with_fields(self, written: dict[str, Any]) -> PendingTask:
        return PendingTask(self.board, self.id, {**self.fields, **written})
