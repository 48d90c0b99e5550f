"""The history middleware: a conversation's earlier turns, from the conversation store."""

from __future__ import annotations

from typing import Any, Protocol

import anyio.to_thread

from kanbanmesh.board import constants as c
from kanbanmesh.errors import MiddlewareError, StoreError
from kanbanmesh.pipeline.base import FieldReader, PendingTask
from kanbanmesh.wire.conversations import Turn


class ConversationHistory(Protocol):
    """Where the turns come from: the server's `ConversationStore`."""

    def history(self, board: str, owner: str, conversation: str) -> list[Turn]:
        """The turns to send with a new task (blocking: called in a thread); raises
        `StoreError` when they cannot be read."""
        ...


class HistoryMiddleware:
    """Writes `history`: the turns of the task's `conversation` so far (store policy:
    `ConversationStore.history`); the worker drops the oldest if the prompt would not fit."""

    name = "history"

    def __init__(self, store: ConversationHistory) -> None:
        self._store = store

    def applies(self, entry: FieldReader) -> bool:
        conversation = entry.get(c.F_CONVERSATION)
        return isinstance(conversation, str) and bool(conversation)

    async def enrich(self, task: PendingTask) -> dict[str, Any]:
        conversation = str(task.fields.get(c.F_CONVERSATION))
        try:
            turns = await anyio.to_thread.run_sync(self._store.history, task.board, task.owner, conversation)
        except StoreError as exc:
            raise MiddlewareError("history_unavailable", str(exc)) from exc
        return {c.F_HISTORY: [t.model_dump() for t in turns]}
