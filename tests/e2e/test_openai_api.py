"""The OpenAI-compatible endpoint, driven by the official `openai` package, unmodified."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import openai
import pytest

from client_sdk import AsyncClient, Column, TaskStatus
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, WorkerPool]]:
    settings = Settings(port=0, data_dir=tmp_path, queue_timeout_s=2.0)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        yield url, WorkerPool(url, tg)
        tg.cancel_scope.cancel()


@pytest.fixture
async def oai(api: tuple[str, WorkerPool]) -> AsyncIterator[openai.AsyncOpenAI]:
    url, _ = api
    async with openai.AsyncOpenAI(base_url="http" + url[2:] + "/v1", api_key="unused", max_retries=0) as client:
        yield client


async def test_chat_streaming_and_not_streaming_agree(api: tuple[str, WorkerPool], oai: openai.AsyncOpenAI) -> None:
    _, pool = api
    await pool.start(delay_ms=5)
    messages = [{"role": "user", "content": "the quick brown fox"}]
    whole = await oai.chat.completions.create(model="echo", messages=messages)  # type: ignore[arg-type]
    pieces, usage = [], None
    stream = await oai.chat.completions.create(
        model="echo", messages=messages, stream=True, stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    assert whole.choices[0].message.content == "echo: the quick brown fox"
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) > 1, "it streamed in pieces"
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert whole.choices[0].finish_reason == "stop"
    models = await oai.models.list()
    assert [m.id for m in models.data] == ["echo"]


async def test_completions_and_params_pass_through(api: tuple[str, WorkerPool], oai: openai.AsyncOpenAI) -> None:
    _, pool = api
    await pool.start()
    done = await oai.completions.create(model="echo", prompt="one two three four", max_tokens=2)
    assert done.choices[0].text == "echo: one "
    assert done.choices[0].finish_reason == "length"


async def test_error_shapes(api: tuple[str, WorkerPool], oai: openai.AsyncOpenAI) -> None:
    url, pool = api
    with pytest.raises(openai.APIStatusError) as no_worker:  # nobody to take it
        await oai.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}])
    assert no_worker.value.status_code == 503
    await pool.start()
    with pytest.raises(openai.NotFoundError) as unknown:
        await oai.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await oai.chat.completions.create(model="echo", messages=[])
    assert bad.value.status_code == 400
    async with httpx.AsyncClient(base_url="http" + url[2:]) as http:
        reply = await http.post("/v1/chat/completions", content=b"{not json")
    assert reply.status_code == 400 and set(reply.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_client_that_goes_away_cancels_its_task(api: tuple[str, WorkerPool]) -> None:
    url, pool = api
    await pool.start(delay_ms=100)
    prompt = " ".join(f"w{i}" for i in range(100))
    async with AsyncClient(url) as watcher:
        async with (
            httpx.AsyncClient(base_url="http" + url[2:], timeout=10) as http,
            http.stream("POST", "/v1/chat/completions", json={
                "model": "echo", "stream": True, "messages": [{"role": "user", "content": prompt}],
            }) as reply,
        ):
            async for line in reply.aiter_lines():
                if '"content": "w' in line:
                    break  # a few words in: hang up
        with anyio.fail_after(10):
            while True:
                done = [e for e in watcher.snapshot().done if e.id.startswith("api-")]
                if done:
                    break
                await watcher.wait_changed(0.5)
    assert done[0].status is TaskStatus.CANCELLED
    assert len(done[0].result or "") < len("echo: " + prompt)
    assert not watcher.peer.board.ids(Column.DOING)
