"""The OpenAI-compatible endpoint against hostile and unusual input: every invalid request gets
an OpenAI-shaped 4xx and leaves the connection usable, bodies are bounded, unsupported
parameters are refused by name, supported ones reach the task, task failures map to 4xx, and a
client that hangs up cancels its task. Driven by the official `openai` package and raw httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

from client_sdk import AsyncClient, TaskStatus
from kanbanmesh.errors import BackendError
from kanbanmesh.server import openai_api
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool
from tests.e2e.backend_workers import running_worker
from worker.backends.base import GenerationEvent, GenerationRequest
from worker.backends.echo import EchoBackend, echo_text

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "hi"}]
ERROR_KEYS = {"message", "type", "param", "code"}
MAX_REQUEST_BYTES = 64 << 10  # a small limit for the `small_api` server


async def _api(settings: Settings) -> AsyncIterator[tuple[str, WorkerPool]]:
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        yield url, WorkerPool(url, tg)
        tg.cancel_scope.cancel()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[str, WorkerPool]]:
    async for served in _api(Settings(port=0, data_dir=tmp_path, queue_timeout_s=2.0)):
        yield served


@pytest.fixture
async def small_api(tmp_path: Path) -> AsyncIterator[tuple[str, WorkerPool]]:
    settings = Settings(port=0, data_dir=tmp_path, queue_timeout_s=2.0,
                        max_request_bytes=MAX_REQUEST_BYTES, max_task_bytes=16 << 10)
    async for served in _api(settings):
        yield served


def http_url(url: str) -> str:
    return "http" + url[2:]


def oai_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=http_url(url) + "/v1", api_key="unused", max_retries=0)


def one_connection(url: str) -> httpx.AsyncClient:
    """A keep-alive client that holds a single connection: a request after one the server
    closed the connection on would open a new one (seen as another local port)."""
    return httpx.AsyncClient(base_url=http_url(url), timeout=10,
                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


def same_connection(reply: httpx.Response, first: httpx.Response) -> bool:
    """Whether `reply` came over the connection `first` came over (httpcore's stream object of
    a connection; a new connection has a new one)."""
    return reply.extensions["network_stream"] is first.extensions["network_stream"]


def assert_error(reply: httpx.Response, status: int, code: str | None = None,
                 param: str | None = None) -> dict[str, Any]:
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    error = reply.json()["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": HI, **extra}


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def body(**fields: Any) -> bytes:
    """A chat request with `fields` over (or added to) a valid one, as JSON."""
    return json.dumps(chat(**fields)).encode()


def turn(**fields: Any) -> bytes:
    """A chat request of one turn with these fields."""
    return body(messages=[fields])


X = b'{"messages": [{"role": "user", "content": "x"}], '  # a raw body's valid start
MISSING = "missing_required_parameter"

# (path, raw body, status, code, param): each over one keep-alive connection.
BAD_REQUESTS: list[tuple[str, bytes, int, str | None, str | None]] = [
    (CHAT, b"{not json", 400, "invalid_json", None),
    (CHAT, b"", 400, "invalid_json", None),
    (CHAT, b"\xff\xfe\x00", 400, "invalid_json", None),
    (CHAT, b"[" * 5000 + b"]" * 5000, 400, "invalid_json", None),
    (CHAT, X + b'"temperature": NaN}', 400, "invalid_json", None),
    (CHAT, X + b'"top_p": 1e999}', 400, "invalid_value", "top_p"),
    (CHAT, b'[{"role": "user"}]', 400, "invalid_type", None),
    (CHAT, b'"hello"', 400, "invalid_type", None),
    (CHAT, b"null", 400, "invalid_type", None),
    (CHAT, json.dumps({"model": "echo"}).encode(), 400, MISSING, "messages"),
    (CHAT, body(messages=[]), 400, "invalid_value", "messages"),
    (CHAT, body(messages="hi"), 400, "invalid_type", "messages"),
    (CHAT, turn(role="wizard", content="x"), 400, None, "messages[0].role"),
    (CHAT, turn(role="user"), 400, MISSING, "messages[0].content"),
    (CHAT, turn(role="user", content=5), 400, "invalid_type", "messages[0].content"),
    (CHAT, turn(role="user", content="x", mood=1), 400, "unknown_parameter", "messages[0].mood"),
    (CHAT, body(stop=[f"s{i}" for i in range(17)]), 400, "invalid_value", "stop"),
    (CHAT, body(stop=[""]), 400, "invalid_value", "stop[0]"),
    (CHAT, body(max_tokens=10_000_000), 400, "invalid_value", "max_tokens"),
    (CHAT, body(max_tokens=0), 400, "invalid_value", "max_tokens"),
    (CHAT, body(max_tokens="5"), 400, "invalid_type", "max_tokens"),
    (CHAT, body(max_tokens=1.5), 400, "invalid_type", "max_tokens"),
    (CHAT, body(seed=2**63 + 5), 400, "invalid_value", "seed"),
    (CHAT, body(seed=-(2**70)), 400, "invalid_value", "seed"),
    (CHAT, body(temperature=7), 400, "invalid_value", "temperature"),
    (CHAT, body(temperature=True), 400, "invalid_type", "temperature"),
    (CHAT, body(temperature="0.5"), 400, "invalid_type", "temperature"),
    (CHAT, body(presence_penalty=3), 400, "invalid_value", "presence_penalty"),
    (CHAT, body(top_k=-1), 400, "invalid_value", "top_k"),
    (CHAT, body(temprature=0.2), 400, "unknown_parameter", "temprature"),
    (CHAT, body(model=5), 400, "invalid_type", "model"),
    (CHAT, body(stream="yes"), 400, "invalid_type", "stream"),
    (CHAT, body(n=0), 400, "invalid_value", "n"),
    (CHAT, body(user=["x"]), 400, "invalid_type", "user"),
    (CHAT, body(stream_options={"include_usage": "y"}), 400, "invalid_type",
     "stream_options.include_usage"),
    (CHAT, body(rag="docs"), 400, None, "rag"),
    (CHAT, body(rag={"collection": ""}), 400, "invalid_value", "rag.collection"),
    (CHAT, body(rag={"collection": "docs", "k": 10**6}), 400, "invalid_value", "rag.k"),
    (CHAT, body(metadata={"a": [1] * 20_000}), 400, "invalid_type", "metadata.a"),
    # Past the board's bounds (kanbanmesh/board/limits.py): the task gate answers.
    (CHAT, body(messages=HI * 10_001), 400, "invalid_request", None),
    (COMPLETIONS, json.dumps({"model": "echo"}).encode(), 400, MISSING, "prompt"),
    (COMPLETIONS, json.dumps({"prompt": 5}).encode(), 400, "invalid_type", "prompt"),
    (COMPLETIONS, json.dumps({"prompt": "x", "max_completion_tokens": 3}).encode(), 400,
     "unknown_parameter", "max_completion_tokens"),
]


async def test_invalid_requests_answer_openai_shaped_4xx_on_a_connection_that_stays_usable(
    api: tuple[str, WorkerPool],
) -> None:
    url, pool = api
    await pool.start()
    json_type = {"content-type": "application/json"}
    async with one_connection(url) as http:
        first = await http.post(CHAT, json=chat())
        assert first.status_code == 200, first.text
        for path, raw, status, code, param in BAD_REQUESTS:
            reply = await http.post(path, content=raw, headers=json_type)
            try:
                assert_error(reply, status, code, param)
            except AssertionError as exc:
                raise AssertionError(f"{path} {raw[:80]!r}: {exc}") from None
            assert same_connection(reply, first), f"{raw[:80]!r}: answered on another connection"
        # Not the method, not a route, not a board name: still OpenAI's shape.
        assert_error(await http.get(CHAT), 405, "method_not_allowed")
        assert_error(await http.post("/v1/audio/speech", json={}), 404, "unknown_url")
        bad_board = await http.post(CHAT, json=chat(), headers={"X-Kanbanmesh-Board": "../etc"})
        assert_error(bad_board, 400, "invalid_board")
        last = await http.post(CHAT, json=chat())
    assert last.status_code == 200 and last.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert same_connection(last, first), "the same keep-alive connection served it all"


async def test_values_past_the_bounds_through_the_openai_client(
    api: tuple[str, WorkerPool],
) -> None:
    """What the issue saw as plain-text 500s: 17 stop strings, max_tokens 1e7, a seed past
    2^63; and a typo."""
    url, pool = api
    await pool.start()
    async with oai_client(url) as oai:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
            ({"max_tokens": 10_000_000}, "max_tokens"),
            ({"seed": 2**63 + 1}, "seed"),
            ({"temperature": 9.0}, "temperature"),
            ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ]
        for extra, param in cases:
            with pytest.raises(openai.BadRequestError) as bad:
                await oai.chat.completions.create(**{"model": "echo", "messages": HI, **extra})
            assert (bad.value.param, bad.value.type) == (param, "invalid_request_error"), extra
        with pytest.raises(openai.BadRequestError) as typo:
            await oai.chat.completions.create(  # type: ignore[call-overload]
                model="echo", messages=HI, extra_body={"temprature": 0.1})
        answer = await oai.chat.completions.create(model="echo", messages=HI)  # type: ignore[arg-type]
    assert typo.value.code == "unknown_parameter" and typo.value.param == "temprature"
    assert answer.choices[0].message.content == "echo: hi"


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
# (keyword arguments of `chat.completions.create`, the parameter named in the refusal)
UNSUPPORTED_CHAT: list[tuple[dict[str, Any], str]] = [
    ({"functions": [TOOL["function"]]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"messages": [{"role": "assistant", "content": "x", "function_call": {"name": "f", "arguments": "{}"}}]},
     "messages[0].function_call"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, IMAGE]}]},
     "messages[0].content[1]"),
]
UNSUPPORTED_COMPLETION: list[tuple[dict[str, Any], str]] = [
    ({"suffix": "end"}, "suffix"),
    ({"echo": True}, "echo"),
    ({"best_of": 2}, "best_of"),
    ({"logprobs": 2}, "logprobs"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
]


async def test_unsupported_parameters_are_refused_by_name(api: tuple[str, WorkerPool]) -> None:
    url, pool = api
    await pool.start()
    prompt = {"model": "echo", "prompt": "hi"}
    async with oai_client(url) as oai, one_connection(url) as http:
        for extra, param in UNSUPPORTED_CHAT:
            with pytest.raises(openai.BadRequestError) as refused:
                await oai.chat.completions.create(**{"model": "echo", "messages": HI, **extra})
            assert (refused.value.code, refused.value.param) == ("unsupported_parameter", param)
            raw = await http.post(CHAT, json={**chat(), **extra})
            assert_error(raw, 400, "unsupported_parameter", param)
        for extra, param in UNSUPPORTED_COMPLETION:
            with pytest.raises(openai.BadRequestError) as refused:
                await oai.completions.create(**{**prompt, **extra})
            assert (refused.value.code, refused.value.param) == ("unsupported_parameter", param)
            raw = await http.post(COMPLETIONS, json={**prompt, **extra})
            assert_error(raw, 400, "unsupported_parameter", param)
        # Nothing was created for them: the board holds no task.
        async with AsyncClient(url) as watcher:
            snapshot = watcher.snapshot()
    assert not (snapshot.todo or snapshot.prepared or snapshot.doing or snapshot.done)


async def test_neutral_values_and_metadata_are_accepted(api: tuple[str, WorkerPool]) -> None:
    """Values that ask for nothing unsupported (no tools, one choice, text) and metadata pass."""
    url, pool = api
    await pool.start()
    neutral: dict[str, Any] = {
        "n": 1, "logprobs": False, "response_format": {"type": "text"}, "tools": [],
        "tool_choice": "none", "parallel_tool_calls": False, "modalities": ["text"],
        "user": "u-1", "metadata": {"team": "a"}, "store": False, "service_tier": "auto",
        "logit_bias": {}, "max_completion_tokens": 50, "seed": 7,
    }
    parts = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    with_developer = [{"role": "developer", "content": "be terse"}, *HI]
    async with oai_client(url) as oai:
        create = oai.chat.completions.create
        whole = await create(model="echo", messages=HI, **neutral)
        stream = await create(model="echo", messages=HI, stream=True,
                              stream_options={"include_usage": True}, **neutral)
        pieces = [chunk async for chunk in stream]
        done = await oai.completions.create(model="echo", prompt=["hello there"], n=1, best_of=1,
                                            echo=False, suffix="", user="u-1")
        joined = await create(model="echo", messages=[{"role": "user", "content": parts}])
        developer = await create(model="echo", messages=with_developer)  # type: ignore[arg-type]
    assert whole.choices[0].message.content == "echo: hi"
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == "echo: hi"
    assert pieces[-1].usage is not None and pieces[-1].usage.completion_tokens > 0
    assert done.choices[0].text == "echo: hello there"
    assert joined.choices[0].message.content == "echo: one\ntwo"
    assert developer.choices[0].message.content == "echo: hi"


async def test_supported_sampling_params_reach_the_task(api: tuple[str, WorkerPool]) -> None:
    url, pool = api
    await pool.start()
    sampling: dict[str, Any] = {
        "presence_penalty": 0.5, "frequency_penalty": -0.25, "temperature": 0.2, "top_p": 0.9,
        "seed": 42, "stop": ["zz"], "max_tokens": 64,
    }
    extras = {"top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}
    async with oai_client(url) as oai, one_connection(url) as http:
        answer = await oai.chat.completions.create(
            model="echo", messages=HI, extra_body=extras, **sampling)  # type: ignore[arg-type]
        chat_entry = (await http.get(f"/boards/default/tasks/{answer.id}")).json()["entry"]
        raw = await http.post(COMPLETIONS, json={
            "model": "echo", "prompt": "hi", "presence_penalty": 1.5, "top_k": 0, "stop": "zz",
            "max_tokens": 8.0,
        })
        assert raw.status_code == 200, raw.text
        task_id = raw.json()["id"]
        completion_entry = (await http.get(f"/boards/default/tasks/{task_id}")).json()["entry"]
    # The HTTP read shows the params a task did not set as null.
    assert {k: v for k, v in chat_entry["params"].items() if v is not None} == {**sampling, **extras}
    given = {k: v for k, v in completion_entry["params"].items() if v is not None}
    assert given == {"presence_penalty": 1.5, "top_k": 0, "stop": ["zz"], "max_tokens": 8}


async def test_an_oversized_body_gets_413_before_it_is_read(api: tuple[str, WorkerPool]) -> None:
    """20 MB against the default limit (2 x 1 MiB + 64 KiB): with a Content-Length it is
    refused before a byte is read; chunked, as soon as the count passes the limit."""
    url, pool = api
    await pool.start()
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (20 << 20) + b'"}]}'

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 1 << 16):
            yield big[start:start + (1 << 16)]

    async with httpx.AsyncClient(base_url=http_url(url), timeout=10) as http:
        with anyio.fail_after(5):
            declared = await http.post(CHAT, content=big)
        with anyio.fail_after(5):
            streamed = await http.post(CHAT, content=chunked())
        after = await http.post(CHAT, json=chat())
    for reply in (declared, streamed):
        assert_error(reply, 413, "request_too_large")
    assert "2162688 bytes" in declared.json()["error"]["message"]
    assert after.status_code == 200
    assert after.json()["choices"][0]["message"]["content"] == "echo: hi"


async def test_the_body_limit_is_a_setting_and_the_task_gate_still_holds(
    small_api: tuple[str, WorkerPool],
) -> None:
    url, pool = small_api
    await pool.start()
    async with oai_client(url) as oai:
        create = oai.chat.completions.create
        with pytest.raises(openai.APIStatusError) as over_body:
            huge = "x" * MAX_REQUEST_BYTES
            await create(model="echo", messages=[{"role": "user", "content": huge}])
        # Under the body limit, over the task limit (16 KiB): the board's gate answers 413 too.
        with pytest.raises(openai.APIStatusError) as over_task:
            await create(model="echo", messages=[{"role": "user", "content": "x" * (32 << 10)}])
        fine = await create(model="echo", messages=HI)  # type: ignore[arg-type]
    assert over_body.value.status_code == 413
    assert f"{MAX_REQUEST_BYTES} bytes" in over_body.value.message
    assert over_task.value.status_code == 413 and "task too large" in over_task.value.message
    assert fine.choices[0].message.content == "echo: hi"


def test_the_default_body_limit_follows_the_task_limit() -> None:
    assert Settings().request_bytes_limit() == 2 * (1 << 20) + (64 << 10)
    assert Settings(max_task_bytes=4 << 20).request_bytes_limit() == (8 << 20) + (64 << 10)
    assert Settings(max_request_bytes=5000).request_bytes_limit() == 5000


async def wait_for(watcher: AsyncClient, found: Callable[[AsyncClient], Any]) -> Any:
    """What `found` returns once it is truthy, as the watcher's replica changes (at most 10 s)."""
    with anyio.fail_after(10):
        while not (result := found(watcher)):
            await watcher.wait_changed(0.5)
    return result


def done_task(task_id: str) -> Callable[[AsyncClient], list[Any]]:
    return lambda watcher: [e for e in watcher.snapshot().done if e.id == task_id]


LONG_PROMPT = [{"role": "user", "content": " ".join(f"w{i}" for i in range(100))}]  # ~10 s of echo


async def test_a_non_streaming_client_that_hangs_up_cancels_its_task(
    api: tuple[str, WorkerPool],
) -> None:
    url, pool = api
    await pool.start(delay_ms=100)
    async with (
        AsyncClient(url) as watcher,
        httpx.AsyncClient(base_url=http_url(url), timeout=30) as http,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(http.post, CHAT, json=chat(messages=LONG_PROMPT)))
            doing = await wait_for(watcher, lambda w: w.snapshot().doing)
            tg.cancel_scope.cancel()  # hang up: the request's connection is closed
        task_id = doing[0].id
        done = await wait_for(watcher, done_task(task_id))
        entry = (await http.get(f"/boards/default/tasks/{task_id}")).json()["entry"]
    assert done[0].status is TaskStatus.CANCELLED and entry["status"] == "cancelled"
    assert len(entry.get("result") or "") < len("echo: " + LONG_PROMPT[0]["content"])


async def test_a_streaming_client_that_hangs_up_cancels_its_task(
    api: tuple[str, WorkerPool],
) -> None:
    """Through the openai client: closing the stream mid-answer cancels the task."""
    url, pool = api
    await pool.start(delay_ms=100)
    async with AsyncClient(url) as watcher, oai_client(url) as oai:
        stream = await oai.chat.completions.create(
            model="echo", messages=LONG_PROMPT, stream=True)  # type: ignore[arg-type]
        async for chunk in stream:
            if chunk.choices and (chunk.choices[0].delta.content or "").startswith("w"):
                break
        await stream.close()
        done = await wait_for(watcher, done_task(chunk.id))
    assert done[0].status is TaskStatus.CANCELLED


class FailingBackend(EchoBackend):
    """Echo, except that a prompt `fail:CODE` fails its task with that error code."""

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        text = echo_text(request).removeprefix("echo: ")
        if text.startswith("fail:"):
            raise BackendError(text[5:], f"the backend says {text[5:]}")
        async for event in super().generate(request):
            yield event


def failing(code: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"fail:{code}"}]


async def test_task_failures_answer_what_the_client_can_act_on(api: tuple[str, WorkerPool]) -> None:
    url, _ = api
    no_such = {"rag": {"collection": "no-such-collection"}}
    async with (
        running_worker(url, FailingBackend()),
        oai_client(url) as oai,
        one_connection(url) as http,
    ):
        create = oai.chat.completions.create
        with pytest.raises(openai.BadRequestError) as overflow:
            await create(model="echo", messages=failing("context_overflow"))  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as bad_params:
            await create(model="echo", messages=failing("bad_params"))  # type: ignore[arg-type]
        with pytest.raises(openai.InternalServerError) as broken:
            await create(model="echo", messages=failing("generation_failed"))  # type: ignore[arg-type]
        # Retrieval from a collection the board does not have: the middleware's failure code.
        with pytest.raises(openai.NotFoundError) as no_collection:
            await create(model="echo", messages=HI, extra_body=no_such)  # type: ignore[arg-type]
        no_question = await http.post(CHAT, json=chat(
            messages=[{"role": "system", "content": "x"}], **no_such))
        overflowing = chat(messages=failing("context_overflow"), stream=True)
        streamed = await http.post(CHAT, json=overflowing)
        after = await http.post(CHAT, json=chat())
    assert overflow.value.code == "context_length_exceeded"
    assert "context_overflow" in overflow.value.message
    assert bad_params.value.code == "invalid_value"
    assert broken.value.status_code == 500 and broken.value.code == "generation_failed"
    assert (no_collection.value.code, no_collection.value.param) == (
        "collection_not_found", "rag.collection")
    assert no_question.status_code in (400, 404), no_question.text
    assert no_question.json()["error"]["type"] == "invalid_request_error"
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "context_length_exceeded"
    assert after.status_code == 200
    assert after.json()["choices"][0]["message"]["content"] == "echo: hi"


async def test_an_unexpected_error_answers_a_json_500_and_the_connection_stays_usable(
    api: tuple[str, WorkerPool], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug behind the endpoint (here, planted) is a logged JSON 500 `server_error`, not
    Starlette's plain-text 500 after which uvicorn drops the keep-alive connection."""
    url, pool = api
    await pool.start()

    def broken(*args: object) -> None:
        raise RuntimeError("planted bug")

    async with one_connection(url) as http:
        first = await http.post(CHAT, json=chat())
        with monkeypatch.context() as patch:
            patch.setattr(openai_api, "_check_model", broken)
            failed = await http.post(CHAT, json=chat())
        with monkeypatch.context() as patch:
            patch.setattr(openai_api, "usage", broken)
            streamed = await http.post(CHAT, json=chat(stream=True,
                                                       stream_options={"include_usage": True}))
        after = await http.post(CHAT, json=chat())
    assert_error(failed, 500, "server_error")
    assert "planted bug" not in failed.text, "internals stay in the log"
    assert "planted bug" in caplog.text
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "server_error"
    assert after.status_code == 200 and same_connection(after, first)
