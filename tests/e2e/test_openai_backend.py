"""The OpenAI-compatible backend against a small OpenAI-compatible server started on loopback:
real HTTP, real server-sent events, through the mesh."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from client_sdk import AsyncClient, TaskStatus
from kanbanmesh.board.schema import ChatMessage, TaskParams
from kanbanmesh.errors import BackendError
from tests.conftest import cli
from tests.e2e.backend_workers import running_worker
from tests.support.asgi import serving
from worker.backends.base import Finished, GenerationRequest, TextChunk
from worker.backends.openai_http import OpenAIBackend, OpenAIConfig

pytestmark = pytest.mark.anyio

MODEL = "fake-model"
KEY = "sk-test-123"


@dataclass
class FakeOpenAI:
    """Answers `/v1/chat/completions` with "you said: <last turn>", word by word, as SSE.
    The last turn picks other behaviours: FAIL400, CONTEXT, FAIL500, FOREVER."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected: anyio.Event = field(default_factory=anyio.Event)
    base_url: str = ""

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/models", self.models),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ])

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {KEY}"

    async def models(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": {"message": "Incorrect API key provided"}}, 401)
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": {"message": "Incorrect API key provided"}}, 401)
        body = await request.json()
        self.requests.append(body)
        said = body["messages"][-1]["content"]
        if said == "FAIL400":
            return JSONResponse({"error": {"message": "temperature: must be <= 2", "type": "invalid_request_error"}}, 400)
        if said == "CONTEXT":
            return JSONResponse({"error": {"message": "This model's maximum context length is 16 tokens", "code": "context_length_exceeded"}}, 400)
        if said == "FAIL500":
            return Response("upstream exploded", 500)
        words = (f"you said: {said}").split(" ")
        limit = body.get("max_tokens") or len(words)
        return StreamingResponse(self._events(words[:limit], said == "FOREVER", body), media_type="text/event-stream")

    async def _events(self, words: list[str], forever: bool, body: dict[str, Any]) -> AsyncIterator[str]:
        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            payload = {"object": "chat.completion.chunk", "model": MODEL,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(payload)}\n\n"

        try:
            yield ": keep-alive\n\n"
            yield chunk({"role": "assistant"})
            for i, word in enumerate(words):
                yield chunk({"content": word if i == 0 else " " + word})
                await anyio.sleep(0.03)  # slow enough that the client sees pieces
            while forever:
                yield chunk({"content": " more"})
                await anyio.sleep(0.02)
            yield chunk({}, "length" if body.get("max_tokens") else "stop")
            if body.get("stream_options", {}).get("include_usage"):
                usage = {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11 + len(words)}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.disconnected.set()


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    async with serving(fake.app()) as url:
        fake.base_url = f"{url}/v1"
        yield fake


def backend_for(fake: FakeOpenAI, key: str | None = KEY) -> OpenAIBackend:
    return OpenAIBackend(OpenAIConfig(base_url=fake.base_url, model=MODEL, api_key=key))


def ask(content: str, **params: Any) -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage(role="user", content=content)], prompt=None, params=TaskParams(**params))


async def test_streams_through_the_mesh_with_params_forwarded(server_url: str, fake_openai: FakeOpenAI) -> None:
    backend = backend_for(fake_openai)
    async with running_worker(server_url, backend), AsyncClient(server_url) as client:
        [seen] = await client.wait_for_workers(1, timeout_s=10)
        assert seen.models == [MODEL] and seen.engine == "openai"
        task = await client.submit(
            "tell me about the sea", model=MODEL,
            params={"max_tokens": 50, "temperature": 0.5, "top_p": 0.9, "stop": ["END"], "seed": 3},
        )
        with anyio.fail_after(10):
            chunks = [chunk async for chunk in task.stream()]
            entry = await task.result()
    assert len(chunks) > 1 and "".join(chunks) == entry.result == "you said: tell me about the sea"
    assert entry.usage is not None and entry.usage.prompt_tokens == 11 and entry.usage.completion_tokens == 7
    [body] = fake_openai.requests
    assert body["model"] == MODEL and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "tell me about the sea"}]  # prompt as a user turn
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "stop", "seed")} == {
        "max_tokens": 50, "temperature": 0.5, "top_p": 0.9, "stop": ["END"], "seed": 3,
    }


async def test_http_errors_become_task_errors(fake_openai: FakeOpenAI) -> None:
    backend = backend_for(fake_openai)
    await backend.start()
    try:
        for said, code, message in [
            ("FAIL400", "bad_params", "HTTP 400: temperature: must be <= 2"),
            ("CONTEXT", "context_overflow", "maximum context length"),
            ("FAIL500", "backend_error", "HTTP 500: upstream exploded"),
        ]:
            with pytest.raises(BackendError, match=message) as caught:
                async for _ in backend.generate(ask(said)):
                    pass
            assert caught.value.code == code
        events = [e async for e in backend.generate(ask("still fine", max_tokens=2))]
        assert [e.text for e in events if isinstance(e, TextChunk)] == ["you", " said:"]
        assert isinstance(events[-1], Finished) and events[-1].finish_reason == "length"
    finally:
        await backend.stop()


async def test_a_wrong_key_or_no_server_fails_at_start(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(BackendError, match="HTTP 401: Incorrect API key") as caught:
        await backend_for(fake_openai, key="wrong").start()
    assert caught.value.code == "backend_auth"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
    port = sock.getsockname()[1]
    with pytest.raises(BackendError, match="cannot reach") as caught:
        await OpenAIBackend(OpenAIConfig(base_url=f"http://127.0.0.1:{port}/v1", model=MODEL)).start()
    sock.close()
    assert caught.value.code == "backend_unreachable"


async def test_cancel_closes_the_http_stream(server_url: str, fake_openai: FakeOpenAI) -> None:
    backend = backend_for(fake_openai)
    async with running_worker(server_url, backend), AsyncClient(server_url) as client:
        await client.wait_for_workers(1, timeout_s=10)
        task = await client.submit("FOREVER")
        with anyio.fail_after(10):
            async for chunk in task.stream():
                if "more" in chunk:
                    break
            entry = await task.cancel()
            await fake_openai.disconnected.wait()  # the server saw the client go away
    assert entry.status is TaskStatus.CANCELLED and (entry.result or "").startswith("you said: FOREVER")


async def test_cli_worker_reads_the_key_from_the_named_variable(server_url: str, fake_openai: FakeOpenAI) -> None:
    command = cli("worker", "--url", server_url, "--backend", "openai", "--base-url", fake_openai.base_url,
                  "--model", MODEL, "--api-key-env", "FAKE_OPENAI_KEY")
    async with await anyio.open_process(command, env={**os.environ, "FAKE_OPENAI_KEY": KEY},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as worker:
        try:
            async with AsyncClient(server_url) as client:
                await client.wait_for_workers(1, timeout_s=20)
                entry = await (await client.submit("hello")).result(timeout_s=10)
            assert entry.result == "you said: hello"
        finally:
            worker.terminate()
            await worker.wait()
    missing = await anyio.run_process(command, check=False, env={k: v for k, v in os.environ.items() if k != "FAKE_OPENAI_KEY"})
    assert missing.returncode == 1 and b"FAKE_OPENAI_KEY, which is not set" in missing.stderr
