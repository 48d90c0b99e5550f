"""One question to the mesh: connect with the kanbanmesh SDK, submit, stream the answer.

`AnswerJob.run` blocks (it runs in a thread of its own inside LibreOffice) and hands each
chunk to a callback as it arrives; `cancel` may be called from any other thread. Failures
come out as `OfficeError`, worded for the user.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from client_sdk import (
    Client,
    ConnectError,
    ConnectionClosedError,
    InvalidTaskError,
    KanbanMeshError,
    StreamRestartedError,
    SyncTaskHandle,
    TaskStatus,
    TransportError,
    UpdateRefusedError,
    WorkerPresence,
)
from kanbanmesh_office.errors import OfficeError
from kanbanmesh_office.settings import OfficeSettings

OWNER = "libreoffice"  # the tasks' owner when no token names one
START_HINT = "Start one with `kanbanmesh up`, or `kanbanmesh worker --url {url}`."


@dataclass(frozen=True)
class Outcome:
    """How a job ended (failures raise instead)."""

    task_id: str
    status: TaskStatus  # succeeded or cancelled
    text: str  # the task's result; for a cancelled task, what was streamed before the stop


class AnswerJob:
    """Ask the mesh once and stream the answer to `on_chunk`."""

    def __init__(
        self,
        settings: OfficeSettings,
        messages: list[dict[str, str]],
        *,
        on_chunk: Callable[[str], None],
        on_progress: Callable[[str], None] = lambda _: None,
        connect_timeout_s: float = 10.0,
        worker_wait_s: float = 5.0,
    ) -> None:
        """
        Args:
            settings: Where to ask (validated settings).
            messages: The task's chat messages.
            on_chunk: Called with each piece of the answer, in order, from `run`'s thread.
            on_progress: Called with a short status line ("Waiting for a worker...").
            connect_timeout_s: How long connecting to the server may take.
            worker_wait_s: How long to wait for a worker to show up on the board.
        """
        self.settings = settings
        self.messages = messages
        self.task_id = ""
        self._on_chunk = on_chunk
        self._on_progress = on_progress
        self._connect_timeout_s = connect_timeout_s
        self._worker_wait_s = worker_wait_s
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._handle: SyncTaskHandle | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def run(self) -> Outcome:
        """Connect, submit, stream; returns once the task is done.

        Raises:
            OfficeError: the server is away or refused us, no worker can take the task, or
                the task failed.
        """
        settings = self.settings
        self._on_progress(f"Connecting to {settings.url}...")
        try:
            with board_client(settings, self._connect_timeout_s) as client:
                check_workers(client, settings, self._worker_wait_s)
                handle = client.submit(
                    messages=self.messages, model=settings.model,
                    params={"max_tokens": settings.max_tokens},
                )
                self.task_id = handle.id
                with self._lock:
                    self._handle = handle
                if self.cancelled:
                    self._send_cancel(handle)
                self._on_progress("Waiting for the answer...")
                streamed = []
                for chunk in handle.stream():
                    streamed.append(chunk)
                    self._on_chunk(chunk)
                entry = handle.wait(timeout_s=30.0)
        except KanbanMeshError as exc:
            raise explain(exc, settings) from exc
        except TimeoutError as exc:
            raise OfficeError(f"The server at {settings.url} stopped answering.") from exc
        if entry.status is TaskStatus.SUCCEEDED:
            return Outcome(entry.id, entry.status, entry.result or "")
        if entry.status is TaskStatus.CANCELLED:
            return Outcome(entry.id, entry.status, "".join(streamed))
        error = entry.error
        detail = f"{error.message} ({error.code})" if error else "no reason given"
        raise OfficeError(f"The mesh could not answer: {detail}", title="kanbanmesh: the task failed")

    def cancel(self) -> None:
        """Stop the answer: the task is cancelled on the board, `run` returns what it had."""
        self._cancelled.set()
        with self._lock:
            handle = self._handle
        if handle is not None:
            self._send_cancel(handle)

    def _send_cancel(self, handle: SyncTaskHandle) -> None:
        # In a thread of its own: the caller (LibreOffice's main thread) must not wait for
        # the worker to notice.
        def send() -> None:
            try:
                handle.cancel(timeout_s=10.0)
            except (KanbanMeshError, TimeoutError, RuntimeError):
                pass  # the task finished or the connection went: `run` reports what happened

        threading.Thread(target=send, name="kanbanmesh-cancel", daemon=True).start()


def board_client(settings: OfficeSettings, connect_timeout_s: float) -> Client:
    """The SDK's blocking client for these settings (it runs its event loop in a thread of
    its own, so LibreOffice's threads just block on it)."""
    return Client(
        settings.url, settings.board, token=settings.token or None,
        owner="" if settings.token else OWNER, connect_timeout_s=connect_timeout_s,
    )


def check_workers(client: Client, settings: OfficeSettings, wait_s: float) -> list[WorkerPresence]:
    """The board's workers; raises `OfficeError` when none is there or none serves the model."""
    try:
        workers = client.wait_for_workers(1, timeout_s=wait_s)
    except TimeoutError:
        raise OfficeError(
            f"No worker is connected to board {settings.board!r} at {settings.url}. "
            + START_HINT.format(url=settings.url),
            title="kanbanmesh: no worker",
        ) from None
    if settings.model and not any(settings.model in worker.models for worker in workers):
        served = sorted({model for worker in workers for model in worker.models})
        raise OfficeError(
            f"No worker on board {settings.board!r} serves the model {settings.model!r}. "
            f"Models there: {', '.join(served) or 'none'}. Choose one in the settings, or leave "
            "the model empty for any.",
            title="kanbanmesh: no such model",
        )
    return workers


def explain(exc: KanbanMeshError, settings: OfficeSettings) -> OfficeError:
    """What a user is told about an SDK error."""
    url, board = settings.url, settings.board
    if isinstance(exc, ConnectError):
        status = http_status(exc)
        if status == 401:
            what = "refused the token" if settings.token else "needs an access token"
            return OfficeError(
                f"The server at {url} {what}. Put a valid token in the kanbanmesh settings "
                "(`kanbanmesh token create --role client --subject NAME --boards "
                f"{board}`).",
                title="kanbanmesh: access refused",
            )
        if status == 403:
            return OfficeError(
                f"This token does not open board {board!r} on {url}.",
                title="kanbanmesh: access refused",
            )
        if status is not None:
            return OfficeError(f"The server at {url} refused the connection: {exc}")
        return OfficeError(
            f"Cannot reach the kanbanmesh server at {url}. Is it running? Start it with "
            f"`kanbanmesh up`, or check the URL in the settings.\n\n({exc})",
            title="kanbanmesh: server unreachable",
        )
    if isinstance(exc, UpdateRefusedError):
        return OfficeError(f"The server refused the task: {exc.reason or exc}")
    if isinstance(exc, ConnectionClosedError):
        return OfficeError(f"The server closed the connection: {exc.reason or exc}")
    if isinstance(exc, StreamRestartedError):
        return OfficeError(
            "A worker was lost and the retried answer differs from the text already inserted. "
            "Remove it and ask again."
        )
    if isinstance(exc, InvalidTaskError):
        return OfficeError(f"The request is not a valid task: {exc}")
    if isinstance(exc, TransportError):
        return OfficeError(f"Talking to the server at {url} failed: {exc}")
    return OfficeError(str(exc))


def http_status(exc: ConnectError) -> int | None:
    """The HTTP status a refused websocket handshake was answered with, if that is what it was."""
    response = getattr(exc.__cause__, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    found = re.search(r"\bHTTP (\d{3})\b", str(exc))
    return int(found.group(1)) if found else None


def describe_board(
    settings: OfficeSettings, *, connect_timeout_s: float = 5.0, wait_s: float = 2.0
) -> tuple[str, list[str]]:
    """Try the settings: a line for the settings dialog, and the models the board's workers
    serve. Raises `OfficeError` as `AnswerJob.run` would."""
    try:
        with board_client(settings, connect_timeout_s) as client:
            workers = check_workers(client, settings, wait_s)
    except KanbanMeshError as exc:
        raise explain(exc, settings) from exc
    models = sorted({model for worker in workers for model in worker.models})
    count = f"{len(workers)} worker{'s' if len(workers) != 1 else ''}"
    return f"Connected to board {settings.board!r}: {count}, models: {', '.join(models)}.", models
