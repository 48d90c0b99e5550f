"""Following a stream across a retried attempt, the same way in the SDK and the OpenAI
endpoint (docs/protocol.md sections 5 and 8): a retry that repeats the text goes on silently,
one that diverges ends the stream with `StreamRestartedError` (the SDK) or a
`stream_restarted` error event (the endpoint), and the task runs on to its end."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path

import anyio
import httpx
import pytest

from client_sdk import AsyncClient, StreamRestartedError, TaskStatus
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from worker import Worker, WorkerSettings
from worker.backends import EchoBackend
from worker.backends.base import GenerationEvent, GenerationRequest, TextChunk

pytestmark = pytest.mark.anyio

PROMPT = " ".join(f"word{i}" for i in range(30))
EXPECTED = "echo: " + PROMPT


class ShoutingBackend(EchoBackend):
    """The echo backend in capitals: a retry on it diverges from an echo attempt."""

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        async for event in super().generate(request):
            yield TextChunk(event.text.upper(), event.tokens) if isinstance(event, TextChunk) else event


@asynccontextmanager
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[str, anyio.abc.TaskGroup]]:
    settings = Settings(port=0, data_dir=tmp_path, orphan_grace_s=0.2, retry_backoff_s=0.0)
    async with anyio.create_task_group() as tg:
        yield await tg.start(serve, settings), tg
        tg.cancel_scope.cancel()


async def start_worker(url: str, tg: anyio.abc.TaskGroup, backend: EchoBackend) -> anyio.CancelScope:
    """A worker on `backend`; cancel the scope returned to kill it (its attempt is lost)."""
    scope = anyio.CancelScope()
    peer = BoardPeer(url)
    worker = Worker(peer, backend, WorkerSettings())

    async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with scope:
            async with anyio.create_task_group() as inner:
                await inner.start(peer.start)
                await inner.start(worker.run)
                task_status.started()

    await tg.start(run)
    return scope


@pytest.mark.parametrize("retry", [EchoBackend, ShoutingBackend])
async def test_the_sdk_stream_across_a_retried_attempt(tmp_path: Path, retry: type[EchoBackend]) -> None:
    async with mesh(tmp_path) as (url, tg), AsyncClient(url) as client:
        first: anyio.CancelScope | None = await start_worker(url, tg, EchoBackend(delay_ms=30))
        with anyio.fail_after(30):
            task = await client.submit(PROMPT)
            pieces: list[str] = []
            with pytest.raises(StreamRestartedError) if retry is ShoutingBackend else nullcontext():
                async for piece in task.stream():
                    pieces.append(piece)
                    if first is not None and len("".join(pieces)) >= 20:
                        first.cancel()  # the worker dies mid-stream: its attempt is lost
                        first = None
                        await start_worker(url, tg, retry(delay_ms=1))
            entry = await task.result()  # the task ran on to its end either way
    assert entry.attempt == 2 and entry.status is TaskStatus.SUCCEEDED
    if retry is EchoBackend:
        assert "".join(pieces) == entry.result == EXPECTED  # nothing repeated, nothing lost
    else:
        assert entry.result == EXPECTED.upper() and EXPECTED.startswith("".join(pieces))


async def test_the_endpoint_ends_a_diverging_retry_with_an_error_event(tmp_path: Path) -> None:
    async with mesh(tmp_path) as (url, tg), AsyncClient(url) as watcher:
        first: anyio.CancelScope | None = await start_worker(url, tg, EchoBackend(delay_ms=30))
        events: list[dict[str, object] | str] = []
        with anyio.fail_after(30):
            async with (
                httpx.AsyncClient(base_url="http" + url[2:], timeout=30) as http,
                http.stream("POST", "/v1/chat/completions", json={
                    "model": "echo", "stream": True, "messages": [{"role": "user", "content": PROMPT}],
                }) as reply,
            ):
                streamed = ""
                async for line in reply.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line.removeprefix("data: ")
                    events.append(data if data == "[DONE]" else json.loads(data))
                    if isinstance(events[-1], dict) and "choices" in events[-1]:
                        streamed += "".join(
                            ch.get("delta", {}).get("content", "") for ch in events[-1]["choices"]  # type: ignore[union-attr, attr-defined]
                        )
                    if first is not None and len(streamed) >= 20:
                        first.cancel()
                        first = None
                        await start_worker(url, tg, ShoutingBackend(delay_ms=1))
            entry = await watcher.task(str(events[1]["id"])).result()  # type: ignore[index]
    assert events[-1] == "[DONE]"
    error = events[-2]
    assert isinstance(error, dict) and error["error"]["code"] == "stream_restarted"  # type: ignore[index]
    assert EXPECTED.startswith(streamed)
    # not cancelled: the task ran on, its final text readable by its id
    assert entry.status is TaskStatus.SUCCEEDED and entry.result == EXPECTED.upper()
