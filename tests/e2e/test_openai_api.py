"""The OpenAI-compatible endpoint, driven by the official `openai` package, unmodified."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import openai
import pytest

from client_sdk import AsyncClient, Column, TaskStatus
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board.roles import TokenRole
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
    stream = await oai.chat.completions.create(  # type: ignore[call-overload]
        model="echo", messages=messages, stream=True, stream_options={"include_usage": True},
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


SECRET = "k" * 40


def api_key(role: TokenRole, subject: str, boards: tuple[str, ...] = ("default",)) -> str:
    return create_token(SECRET, Identity(subject=subject, role=role, boards=list(boards)), 600)


@pytest.fixture
async def secure_api(tmp_path: Path) -> AsyncIterator[tuple[str, WorkerPool]]:
    settings = Settings(
        port=0, data_dir=tmp_path, auth_secret=SECRET,  # type: ignore[arg-type]
        queue_timeout_s=2.0, max_open_tasks=2, max_submissions_per_minute=3,
    )
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        yield url, WorkerPool(url, tg, token=api_key(TokenRole.WORKER, "host"))
        tg.cancel_scope.cancel()


def secure_client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http" + url[2:] + "/v1", api_key=key, max_retries=0)


async def test_api_keys_and_owner_limits(secure_api: tuple[str, WorkerPool]) -> None:
    """Keys are the server's tokens (401 without one, 403 for another board), the request's
    task belongs to the key's subject, and the board's per-owner limits answer 429."""
    url, pool = secure_api
    await pool.start()
    hi = [{"role": "user", "content": "hi"}]
    async with secure_client(url, "not-a-token") as anonymous:
        with pytest.raises(openai.AuthenticationError) as unknown:
            await anonymous.chat.completions.create(model="echo", messages=hi)  # type: ignore[arg-type]
    assert unknown.value.status_code == 401 and unknown.value.type == "authentication_error"
    async with secure_client(url, api_key(TokenRole.CLIENT, "alice", boards=("elsewhere",))) as outsider:
        with pytest.raises(openai.PermissionDeniedError):
            await outsider.chat.completions.create(  # type: ignore[call-overload]
                model="echo", messages=hi, extra_headers={"X-Kanbanmesh-Board": "default"})
    async with (
        secure_client(url, api_key(TokenRole.CLIENT, "alice")) as alice,
        secure_client(url, api_key(TokenRole.CLIENT, "bob")) as bob,
        AsyncClient(url, token=api_key(TokenRole.ADMIN, "ops")) as watcher,
    ):
        answers = [await alice.chat.completions.create(model="echo", messages=hi)  # type: ignore[arg-type]
                   for _ in range(3)]
        with pytest.raises(openai.RateLimitError) as limited:
            await alice.chat.completions.create(model="echo", messages=hi)  # type: ignore[arg-type]
        # Another owner is not affected.
        theirs = await bob.chat.completions.create(model="echo", messages=hi)  # type: ignore[arg-type]
        with anyio.fail_after(10):  # the watcher's replica catches up
            while len(owners := {e.id: e.owner for e in watcher.snapshot().done}) < 4:
                await watcher.wait_changed(0.5)
    assert [a.choices[0].message.content for a in answers] == ["echo: hi"] * 3
    assert limited.value.code == "rate_limit_exceeded" and "3 a minute" in limited.value.message
    assert theirs.choices[0].message.content == "echo: hi"
    assert owners[answers[0].id] == "alice" and owners[theirs.id] == "bob"
    assert len(owners) == 4 and not watcher.snapshot().todo, "the refused request left no task"


async def test_a_request_goes_to_the_board_its_key_opens(secure_api: tuple[str, WorkerPool]) -> None:
    """No board header: the key's one board; a header names another it opens; else 403."""
    url, _ = secure_api
    hi = [{"role": "user", "content": "hi"}]
    http_url = "http" + url[2:]
    pool = WorkerPool(url, secure_api[1].tg, token=api_key(TokenRole.WORKER, "host", ("team-a",)), board="team-a")
    await pool.start()
    async with secure_client(url, api_key(TokenRole.CLIENT, "carol", boards=("team-a",))) as carol:
        answer = await carol.chat.completions.create(model="echo", messages=hi)  # type: ignore[arg-type]
        with pytest.raises(openai.PermissionDeniedError):
            await carol.chat.completions.create(  # type: ignore[call-overload]
                model="echo", messages=hi, extra_headers={"X-Kanbanmesh-Board": "default"})
    async with httpx.AsyncClient(base_url=http_url) as http:
        found = await http.get(f"/boards/team-a/tasks/{answer.id}",
                               headers={"Authorization": f"Bearer {api_key(TokenRole.ADMIN, 'ops', ('*',))}"})
    assert answer.choices[0].message.content == "echo: hi"
    assert found.status_code == 200 and found.json()["entry"]["owner"] == "carol"
