"""In-process workers on any backend (tests/conftest.py's WorkerPool runs echo only)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import anyio

from kanbanmesh.board.prefix import MAX_DIGEST_ENTRIES, prefix_hashes
from kanbanmesh.peer import BoardPeer
from worker import Worker, WorkerSettings
from worker.backends.base import Backend, Finished, GenerationEvent, GenerationRequest, TextChunk
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


class CachingEchoBackend(EchoBackend):
    """The echo backend with a pretend prompt cache: it remembers the turns and answer of each
    task it finished (the most recent `sequences`), and advertises their prefix hashes as a
    `CachingBackend` does, one token per word. A task whose last turn starts with "hold"
    waits for `release` before it answers, so that a test can keep this worker's slot busy."""

    def __init__(self, *, sequences: int = 8) -> None:
        super().__init__()
        self._sequences: OrderedDict[tuple[tuple[str, str], ...], None] = OrderedDict()
        self._max_sequences = sequences
        self.release = anyio.Event()
        self.holding = anyio.Event()  # set once a "hold" task waits

    def cache_digest(self) -> dict[str, int]:
        digest: dict[str, int] = {}
        for turns in reversed(self._sequences):  # the most recent first, should 64 not hold all
            tokens = 0
            for (_, content), prefix in zip(turns, prefix_hashes(turns), strict=True):
                tokens += len(content.split())
                if len(digest) < MAX_DIGEST_ENTRIES:
                    digest.setdefault(prefix, tokens)
        return digest

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        turns = (
            tuple((m.role, m.content) for m in request.messages) if request.messages is not None
            else (("user", request.prompt or ""),)
        )
        if turns[-1][1].startswith("hold"):
            self.holding.set()
            await self.release.wait()
        answer = ""
        async for event in super().generate(request):
            if isinstance(event, TextChunk):
                answer += event.text
            elif isinstance(event, Finished):
                self._remember((*turns, ("assistant", answer)))
            yield event

    def _remember(self, turns: tuple[tuple[str, str], ...]) -> None:
        self._sequences[turns] = None
        self._sequences.move_to_end(turns)
        while len(self._sequences) > self._max_sequences:
            self._sequences.popitem(last=False)


class Shared:
    """A started backend lent to several workers: their `stop()` does not unload it."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.engine = backend.engine
        self.models = backend.models
        self.generate = backend.generate
        digest = getattr(backend, "cache_digest", None)
        if callable(digest):  # a backend with a prompt cache advertises it (CachingBackend)
            self.cache_digest = digest

    async def start(self) -> None:
        await self._backend.start()

    async def stop(self) -> None:
        return None


@asynccontextmanager
async def running_worker(
    url: str, backend: Backend, *, slots: int = 1, name: str = "", worker_id: str = ""
) -> AsyncIterator[Worker]:
    """A worker serving `backend` on the default board of `url`, stopped on exit."""
    peer = BoardPeer(url, "default")
    worker = Worker(peer, backend, WorkerSettings(name=name, slots=slots, worker_id=worker_id))
    async with anyio.create_task_group() as tg:
        await tg.start(peer.start)
        await tg.start(worker.run)
        try:
            yield worker
        finally:
            tg.cancel_scope.cancel()
