"""In-process workers on any backend (tests/conftest.py's WorkerPool runs echo only)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import anyio

from kanbanmesh.peer import BoardPeer
from worker import Worker, WorkerSettings
from worker.backends.base import Backend, GenerationEvent, GenerationRequest
from worker.backends.echo import EchoBackend


class RecordingBackend(EchoBackend):
    """The echo backend, keeping every request it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        async for event in super().generate(request):
            yield event


class Shared:
    """A started backend lent to several workers: their `stop()` does not unload it."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.engine = backend.engine
        self.models = backend.models
        self.generate = backend.generate

    async def start(self) -> None:
        await self._backend.start()

    async def stop(self) -> None:
        return None


@asynccontextmanager
async def running_worker(url: str, backend: Backend, *, slots: int = 1, name: str = "") -> AsyncIterator[Worker]:
    """A worker serving `backend` on the default board of `url`, stopped on exit."""
    peer = BoardPeer(url, "default")
    worker = Worker(peer, backend, WorkerSettings(name=name, slots=slots))
    async with anyio.create_task_group() as tg:
        await tg.start(peer.start)
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            tg.cancel_scope.cancel()
