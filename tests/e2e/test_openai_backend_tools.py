"""The OpenAI-compatible backend passes tools, structured output and logprobs through, and
writes the calls an upstream streams (`delta.tool_calls`) into the task as a client reads them.

The upstream here is a small fake on loopback, not a second kanbanmesh server: the mesh's own
OpenAI endpoint streams `delta.tool_calls` only with the endpoint work of the same issue, so
these cases (calls in pieces, calls after text, a call without arguments, logprobs per chunk,
arguments that are not an object) come from the fake. Real HTTP, real server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from client_sdk import AsyncClient, TaskFailedError
from kanbanmesh.board.tool_calls import call_id, split_output
from tests.e2e.backend_workers import running_worker
from tests.support.asgi import serving
from worker.backends.openai_http import OpenAIBackend, OpenAIConfig

pytestmark = pytest.mark.anyio

MODEL = "fake-tools"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "now", "description": "the time"}}]


def _logprobs(token: str) -> dict[str, Any]:
    return {"content": [{"token": token, "logprob": -0.25, "bytes": list(token.encode()),
                         "top_logprobs": [{"token": token, "logprob": -0.25, "bytes": list(token.encode())}]}]}


@dataclass
class FakeToolServer:
    """Streams text, then two calls in pieces (OpenAI's delta format), with logprobs; the last
    turn "BROKEN" makes it stream arguments that are not a JSON object, "INVALID" arguments
    that break the tool's schema."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    base_url: str = ""

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/models", self.models),
                                 Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        last = body["messages"][-1].get("content")
        return StreamingResponse(self._events(last), media_type="text/event-stream")

    async def _events(self, last: str | None) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: dict[str, Any] | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
            return f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n"

        def call(index: int, **function: str) -> dict[str, Any]:
            head = {"id": f"up_{index}", "type": "function"} if "name" in function else {}
            return {"tool_calls": [{"index": index, **head, "function": function}]}

        yield chunk({"role": "assistant", "content": "Let me check."}, logprobs=_logprobs("Let me check."))
        yield chunk(call(0, name="get_weather", arguments=""))
        pieces = {"BROKEN": ["[1, 2]"], "INVALID": ['{"city": ', "75001}"]}.get(last or "", ['{"ci', 'ty": "Pa', 'ris"}'])
        for piece in pieces:
            await anyio.sleep(0.01)
            yield chunk(call(0, arguments=piece))
        yield chunk(call(1, name="now"))  # no arguments at all
        yield chunk({}, "tool_calls")
        yield "data: [DONE]\n\n"


@pytest.fixture
async def fake_tools() -> AsyncIterator[FakeToolServer]:
    fake = FakeToolServer()
    async with serving(fake.app()) as url:
        yield replace(fake, base_url=f"{url}/v1")  # the same list of requests


async def test_calls_and_logprobs_pass_through_the_mesh(server_url: str, fake_tools: FakeToolServer) -> None:
    backend = OpenAIBackend(OpenAIConfig(base_url=fake_tools.base_url, model=MODEL))
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c0", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c0", "content": "noon"},
    ]
    response_format = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}}
    async with running_worker(server_url, backend), AsyncClient(server_url) as client:
        await client.wait_for_workers(1, timeout_s=10)
        task = await client.submit(messages=messages, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                   response_format=response_format, params={"logprobs": True, "top_logprobs": 1})
        with anyio.fail_after(20):
            streamed = "".join([chunk async for chunk in task.stream()])
            entry = await task.result()
    [body] = fake_tools.requests
    assert body["tools"] == TOOLS and body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["response_format"] == response_format
    assert body["logprobs"] is True and body["top_logprobs"] == 1
    assert body["messages"] == [{**messages[0], "role": "system"}, *messages[1:]]

    content, calls = split_output(streamed)
    assert content == "Let me check." == entry.result and entry.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("now", {})]
    assert entry.tool_calls is not None
    assert [(t.id, t.function.name, t.function.arguments) for t in entry.tool_calls] == [
        (call_id(task.id, 0), "get_weather", '{"city": "Paris"}'), (call_id(task.id, 1), "now", "{}")]
    assert entry.logprobs is not None and [t.token for t in entry.logprobs.content] == ["Let me check."]


async def test_arguments_that_are_not_an_object_fail_the_task(server_url: str, fake_tools: FakeToolServer) -> None:
    backend = OpenAIBackend(OpenAIConfig(base_url=fake_tools.base_url, model=MODEL))
    async with running_worker(server_url, backend), AsyncClient(server_url) as client:
        await client.wait_for_workers(1, timeout_s=10)
        task = await client.submit("BROKEN", tools=TOOLS)
        with anyio.fail_after(20), pytest.raises(TaskFailedError) as failed:
            await task.result()
    assert failed.value.code == "backend_error" and "not a JSON object" in failed.value.message
    assert "tool_choice" in fake_tools.requests[0] and fake_tools.requests[0]["tool_choice"] == "auto"


async def test_arguments_that_break_the_schema_fail_the_task(server_url: str, fake_tools: FakeToolServer) -> None:
    """The upstream is another server, which may not enforce the schemas: the worker checks."""
    backend = OpenAIBackend(OpenAIConfig(base_url=fake_tools.base_url, model=MODEL))
    async with running_worker(server_url, backend), AsyncClient(server_url) as client:
        await client.wait_for_workers(1, timeout_s=10)
        task = await client.submit("INVALID", tools=TOOLS, tool_choice="required")
        with anyio.fail_after(20), pytest.raises(TaskFailedError) as failed:
            await task.result()
    assert failed.value.code == "invalid_tool_call"
    assert "'get_weather'" in failed.value.message and "type at $.city" in failed.value.message


async def test_the_openai_endpoint_answers_a_schema_breaking_call_500_invalid_tool_call(
    server_url: str, fake_tools: FakeToolServer
) -> None:
    backend = OpenAIBackend(OpenAIConfig(base_url=fake_tools.base_url, model=MODEL))
    async with (
        running_worker(server_url, backend), AsyncClient(server_url) as client,
        openai.AsyncOpenAI(base_url="http" + server_url[2:] + "/v1", api_key="unused", max_retries=0) as oai,
    ):
        await client.wait_for_workers(1, timeout_s=10)
        with anyio.fail_after(20), pytest.raises(openai.InternalServerError) as failed:
            await oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "INVALID"}],
                                              tools=TOOLS, tool_choice="required")  # type: ignore[arg-type]
    assert failed.value.status_code == 500 and failed.value.code == "invalid_tool_call"
    assert isinstance(failed.value.body, dict) and failed.value.body["param"] == "tools"
    assert "type at $.city" in failed.value.message
