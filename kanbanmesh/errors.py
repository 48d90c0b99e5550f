"""The one exception tree of kanbanmesh.

Errors from websockets, pycrdt, sqlite and backends are translated at the boundary
(`raise ... from exc`); users only ever catch these::

    KanbanMeshError
    ├── ConfigurationError        a setting or flag is invalid
    │   └── TooManyBoardsError    a new board would pass the server's board limit
    ├── AuthError                 a token is missing, malformed, expired or forged
    ├── BoardError                the board model was asked for something impossible
    │   ├── IllegalMoveError      a transition not in the table of legal moves
    │   ├── InvalidTaskError      a task entry fails its schema or the value bounds
    │   │   └── TaskTooLargeError a task's request or entry is over its size limit
    │   └── TaskNotFoundError     no task with that id on the board (or in the archive)
    ├── TransportError            talking to the server failed
    │   ├── BoardRotatedError     the board moved to a new generation while a write was in flight
    │   ├── ConnectError          could not connect (server down, bad URL)
    │   ├── ConnectionClosedError the server closed the connection; `code` and `reason` say why
    │   │   ├── UpdateRefusedError    the server refused one of our writes
    │   │   └── MessageTooLargeError  a message over the size limit was refused
    │   └── ProtocolError         bytes that do not decode as the y-websocket protocol
    ├── TaskFailedError           a task ended `failed`; `error` holds code and message
    ├── TaskCancelledError        a task ended `cancelled`
    ├── StreamRestartedError      a retried task produced text that differs from what was streamed
    ├── BackendError              an LLM backend could not run a request
    ├── MiddlewareError           a pre-inference middleware could not enrich a task
    ├── RagError                  ingesting, indexing or searching a collection failed
    └── StoreError                persistence failed

`AuthError` lives with the tokens (`kanbanmesh/auth.py`) and `TooManyBoardsError` with the
server's boards; every other class is defined here. `tests/test_docs.py` holds this tree equal
to the classes.
"""

from __future__ import annotations


class KanbanMeshError(Exception):
    """Base class of every error kanbanmesh raises."""


class ConfigurationError(KanbanMeshError):
    """Raised when a setting, flag or environment variable has an invalid value."""


class BoardError(KanbanMeshError):
    """Raised when the board model is asked for something impossible."""


class IllegalMoveError(BoardError):
    """Raised when a transition is not in the table of legal moves for that writer."""


class InvalidTaskError(BoardError):
    """Raised when a task entry fails its schema (missing id, no prompt, bad params...)."""


class TaskTooLargeError(InvalidTaskError):
    """Raised when a task's request or whole entry is over its size limit
    (`kanbanmesh.board.limits`)."""


class TaskNotFoundError(BoardError):
    """Raised when no task with the given id is on the board."""


class TransportError(KanbanMeshError):
    """Raised when talking to the server fails."""


class BoardRotatedError(TransportError):
    """The board moved to a new generation of its document while a write of ours was in
    flight: the write may be lost and must be made again on the new replica."""


class ConnectError(TransportError):
    """Raised when a connection to the server cannot be opened."""


class ConnectionClosedError(TransportError):
    """Raised when the server closed the connection; `code` and `reason` come from the close frame."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class UpdateRefusedError(ConnectionClosedError):
    """Raised when the server refused one of our updates and closed the connection."""


class MessageTooLargeError(ConnectionClosedError):
    """Raised when a message was over the server's size limit."""


class ProtocolError(TransportError):
    """Raised when bytes do not decode as a y-websocket message."""


class TaskFailedError(KanbanMeshError):
    """Raised by `result()` when a task ended `failed`."""

    def __init__(self, task_id: str, code: str, message: str) -> None:
        super().__init__(f"task {task_id} failed: {code}: {message}")
        self.task_id = task_id
        self.code = code
        self.message = message


class TaskCancelledError(KanbanMeshError):
    """Raised by `result()` when a task ended `cancelled`."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id


class StreamRestartedError(KanbanMeshError):
    """Raised by `stream()` when a retry of the task produced text that differs from the text
    already streamed; `result()` still returns the final text."""

    def __init__(self, task_id: str, attempt: int) -> None:
        super().__init__(
            f"task {task_id} was retried (attempt {attempt}) and its new text differs "
            "from what was already streamed"
        )
        self.task_id = task_id
        self.attempt = attempt


class BackendError(KanbanMeshError):
    """Raised when an LLM backend cannot run a request; `code` is written into the task."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MiddlewareError(KanbanMeshError):
    """Raised by a pre-inference middleware (history, retrieval) that cannot enrich a task; the
    task then ends `failed` with `code` and the message as its `error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RagError(KanbanMeshError):
    """Raised when a collection cannot be ingested, indexed or searched; `code` is stable
    (`collection_not_found`, `unreadable_document`, `model_mismatch`, `rag_unavailable`, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StoreError(KanbanMeshError):
    """Raised when the board store cannot read or write."""
