"""The blocking Python client: the async client run on a private event loop thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from typing import Any, Self, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

from awareness.states import WorkerPresence
from client_sdk._async_client import AsyncClient, TaskHandle
from client_sdk._models import BoardSnapshot, EmbedResult
from kanbanmesh.board import constants as c
from kanbanmesh.board.schema import ChatMessage, RagSpec, TaskEntry, TaskParams

_T = TypeVar("_T")


class Client:
    """Blocking twin of `AsyncClient`, for scripts and notebooks::

        with Client("ws://127.0.0.1:8765") as client:
            task = client.submit("Tell me a joke")
            for chunk in task.stream():
                print(chunk, end="", flush=True)
    """

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765",
        board: str = c.DEFAULT_BOARD,
        *,
        token: str | None = None,
        owner: str = "",
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._async = AsyncClient(url, board, token=token, owner=owner, connect_timeout_s=connect_timeout_s)
        self._stack = ExitStack()
        self._portal: BlockingPortal | None = None
        self._held: Future[None] | None = None
        self._closing: anyio.Event | None = None

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def portal(self) -> BlockingPortal:
        if self._portal is None:
            raise RuntimeError("the client is not connected; use `with Client(...)` or connect()")
        return self._portal

    def connect(self) -> None:
        portal = self._stack.enter_context(start_blocking_portal())
        try:
            self._held, _ = portal.start_task(self._hold)
        except BaseException:
            self._stack.close()
            raise
        self._portal = portal

    async def _hold(self, *, task_status: TaskStatus[None]) -> None:
        # The async client lives in one task of the portal, from connect to close: its task
        # group must be entered and left by the same task.
        self._closing = anyio.Event()
        async with self._async:
            task_status.started()
            await self._closing.wait()

    def close(self) -> None:
        if self._portal is not None and self._closing is not None:
            self._portal.call(self._closing.set)
            if self._held is not None:
                self._held.result()
            self._portal = None
        self._stack.close()

    def submit(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[ChatMessage | dict[str, Any]] | None = None,
        model: str = "",
        params: TaskParams | dict[str, Any] | None = None,
        priority: int = 0,
        task_id: str | None = None,
        conversation: str | None = None,
        rag: str | RagSpec | dict[str, Any] | None = None,
        after: Sequence[str | SyncTaskHandle] | None = None,
        durable_timeout_s: float | None = 10.0,
    ) -> SyncTaskHandle:
        """See `AsyncClient.submit`."""
        parents = None if after is None else [a.id if isinstance(a, SyncTaskHandle) else a for a in after]
        handle = self.portal.call(
            lambda: self._async.submit(
                prompt, messages=messages, model=model, params=params,
                priority=priority, task_id=task_id, conversation=conversation, rag=rag,
                after=parents, durable_timeout_s=durable_timeout_s,
            )
        )
        return SyncTaskHandle(self.portal, handle)

    def submit_embed(
        self,
        inputs: str | Sequence[str | Sequence[int]],
        *,
        model: str = "",
        dimensions: int | None = None,
        priority: int = 0,
        task_id: str | None = None,
        durable_timeout_s: float | None = 10.0,
    ) -> SyncTaskHandle:
        """See `AsyncClient.submit_embed`."""
        handle = self.portal.call(
            lambda: self._async.submit_embed(
                inputs, model=model, dimensions=dimensions, priority=priority, task_id=task_id,
                durable_timeout_s=durable_timeout_s,
            )
        )
        return SyncTaskHandle(self.portal, handle)

    def embed(
        self,
        inputs: str | Sequence[str | Sequence[int]],
        *,
        model: str = "",
        dimensions: int | None = None,
        timeout_s: float | None = 60.0,
    ) -> EmbedResult:
        """See `AsyncClient.embed`."""
        return self.portal.call(
            lambda: self._async.embed(inputs, model=model, dimensions=dimensions, timeout_s=timeout_s)
        )

    def task(self, task_id: str) -> SyncTaskHandle:
        return SyncTaskHandle(self.portal, self._async.task(task_id))

    def snapshot(self) -> BoardSnapshot:
        return self.portal.call(_sync_call, self._async.snapshot)

    def workers(self) -> list[WorkerPresence]:
        return self.portal.call(_sync_call, self._async.workers)

    def wait_for_workers(
        self, count: int = 1, timeout_s: float = 30.0, *, kind: str | None = None
    ) -> list[WorkerPresence]:
        return self.portal.call(lambda: self._async.wait_for_workers(count, timeout_s, kind=kind))


class SyncTaskHandle:
    """Blocking twin of `TaskHandle`."""

    def __init__(self, portal: BlockingPortal, handle: TaskHandle) -> None:
        self._portal = portal
        self._handle = handle
        self.id = handle.id

    def stream(self) -> Iterator[str]:
        agen = self._handle.stream()
        try:
            while True:
                try:
                    yield self._portal.call(agen.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            self._portal.call(agen.aclose)

    def result(self, timeout_s: float | None = None) -> TaskEntry:
        return self._portal.call(self._handle.result, timeout_s)

    def wait(self, timeout_s: float | None = None) -> TaskEntry:
        return self._portal.call(self._handle.wait, timeout_s)

    def embeddings(self, timeout_s: float | None = None) -> EmbedResult:
        return self._portal.call(self._handle.embeddings, timeout_s)

    def cancel(self, timeout_s: float | None = 10.0) -> TaskEntry:
        return self._portal.call(self._handle.cancel, timeout_s)


async def _sync_call(fn: Callable[[], _T]) -> _T:
    # Board reads must run on the loop thread: pycrdt documents are not shared across threads.
    return fn()
