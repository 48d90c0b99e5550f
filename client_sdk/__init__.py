"""The kanbanmesh Python SDK: everything a user imports comes from here."""

from __future__ import annotations

from awareness.states import WorkerPresence, WorkerState
from client_sdk._async_client import AsyncClient, TaskHandle
from client_sdk._models import BoardSnapshot, EmbedResult
from client_sdk._sync_client import Client, SyncTaskHandle
from kanbanmesh.board.schema import (
    ChatMessage,
    Citation,
    RagSpec,
    TaskEntry,
    TaskParams,
    TaskStatus,
    Timings,
    Usage,
)
from kanbanmesh.board.templates import result_ref
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import (
    BoardRotatedError,
    ConnectError,
    ConnectionClosedError,
    InvalidTaskError,
    KanbanMeshError,
    MessageTooLargeError,
    StreamRestartedError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTooLargeError,
    TransportError,
    UpdateRefusedError,
)

__all__ = [
    "AsyncClient",
    "BoardRotatedError",
    "BoardSnapshot",
    "ChatMessage",
    "Citation",
    "Client",
    "Column",
    "ConnectError",
    "ConnectionClosedError",
    "EmbedResult",
    "InvalidTaskError",
    "KanbanMeshError",
    "MessageTooLargeError",
    "RagSpec",
    "StreamRestartedError",
    "SyncTaskHandle",
    "TaskCancelledError",
    "TaskEntry",
    "TaskFailedError",
    "TaskHandle",
    "TaskNotFoundError",
    "TaskParams",
    "TaskStatus",
    "TaskTooLargeError",
    "Timings",
    "TransportError",
    "UpdateRefusedError",
    "Usage",
    "WorkerPresence",
    "WorkerState",
    "result_ref",
]
