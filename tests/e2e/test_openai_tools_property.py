"""A property of the OpenAI endpoint's tool-calling and structured-output fields: whatever
`tools`, `tool_choice`, `response_format`, tool turns, `logprobs` and `n` a client sends, it gets
an OpenAI-shaped 4xx or a valid answer (never a 500), and a refused request leaves nothing on
the board: at the end the board holds exactly the tasks of the answers.

The mesh (server, embedded broker, an echo worker) runs in a background event loop while
Hypothesis draws bodies in this thread, as in test_openai_api_property.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_sdk import AsyncClient
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool
from tests.e2e.test_openai_api_property import RANDOM_IN_BACKGROUND, check_answer, json_value

pytestmark = pytest.mark.filterwarnings(f"ignore:{RANDOM_IN_BACKGROUND}")

names = st.sampled_from(["f", "get_weather", "a-b_1", "", "two words", "x" * 65]) | st.text(max_size=8)
schemas = st.sampled_from([
    {"type": "object"},
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "additionalProperties": False},
    {"type": "array"}, {"type": 7}, {"properties": 3}, {"$ref": "http://example.com/x"},
    {"$schema": 5}, {"$schema": ["a"]}, {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
    {"type": "object", "pattern": "("},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"enum": [1, "2", None]}}}}},
]) | st.dictionaries(
    st.sampled_from(["type", "properties", "required", "enum", "items", "pattern", "$schema", "$ref", "$id", "x"]),
    json_value, max_size=3)
functions = st.fixed_dictionaries(
    {"name": names}, optional={"description": st.text(max_size=10) | json_value, "parameters": schemas | json_value,
                               "strict": st.booleans() | json_value})
tools = st.fixed_dictionaries({"type": st.sampled_from(["function", "retrieval"]), "function": functions})
tool_choices = (
    st.sampled_from(["auto", "none", "required", "any", ""])
    | st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries({"name": names})})
    | json_value
)
response_formats = (
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])})
    | st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": st.fixed_dictionaries(
        {"name": names}, optional={"schema": schemas | json_value, "strict": st.booleans(), "description": json_value})})
    | json_value
)
calls = st.fixed_dictionaries({
    "id": st.sampled_from(["c1", "c2", ""]) | json_value, "type": st.sampled_from(["function", "other"]),
    "function": st.fixed_dictionaries({"name": names, "arguments": st.sampled_from(["{}", '{"a": 1}', "nope"]) | json_value}),
})
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=6)}),
                 max_size=3)
turns = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
     "content": st.none() | st.text(max_size=10) | parts},
    optional={"tool_calls": st.lists(calls, max_size=2) | json_value,
              "tool_call_id": st.sampled_from(["c1", "c2"]) | json_value, "name": st.text(max_size=6)},
)
extras: dict[str, st.SearchStrategy[Any]] = {
    "tools": st.lists(tools, max_size=3) | json_value,
    "tool_choice": tool_choices,
    "parallel_tool_calls": st.booleans() | json_value,
    "response_format": response_formats,
    "logprobs": st.booleans() | json_value,
    "top_logprobs": st.integers(-1, 25) | json_value,
    "n": st.integers(0, 10) | json_value,
    "seed": st.integers(-5, 5),
    "stream": st.booleans(),
}


good_schemas = st.sampled_from([
    {"type": "object"}, {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}])
# Well-formed tools whose schemas are good or, now and then, anything: a hostile schema meets
# its check with nothing else wrong beside it.
good_tools = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "g", "get_weather"])},
    optional={"parameters": good_schemas | good_schemas | good_schemas | schemas})}),
    min_size=1, max_size=3, unique_by=lambda t: t["function"]["name"])
# Values an agent framework sends, all valid: to reach the answering paths too.
good_extras: dict[str, st.SearchStrategy[Any]] = {
    "tool_choice": st.sampled_from(["auto", "none", "required"]),
    "parallel_tool_calls": st.booleans(),
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}])
    | st.builds(lambda schema: {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}, schemas),
    "logprobs": st.booleans(),
    "n": st.integers(1, 3),
    "seed": st.integers(-5, 5),
    "stream": st.booleans(),
}


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A chat request with tool fields: all of them valid, or some drawn from anything."""
    if draw(st.booleans()):
        body: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        if draw(st.booleans()):
            body["tools"] = draw(good_tools)
        for key in draw(st.lists(st.sampled_from(list(good_extras)), max_size=4, unique=True)):
            body[key] = draw(good_extras[key])
        return body
    body = {"model": "echo", "messages": [*draw(st.lists(turns, max_size=3)), {"role": "user", "content": "hi"}]}
    for key in draw(st.lists(st.sampled_from(list(extras)), min_size=1, max_size=5, unique=True)):
        body[key] = draw(extras[key])
    return body


@asynccontextmanager
async def mesh(data_dir: Path) -> AsyncIterator[tuple[str, AsyncClient]]:
    settings = Settings(port=0, data_dir=data_dir, queue_timeout_s=5.0, max_open_tasks=10_000,
                        max_submissions_per_minute=100_000)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        await WorkerPool(url, tg).start(slots=4)
        async with AsyncClient(url) as watcher:
            yield "http" + url[2:], watcher
        tg.cancel_scope.cancel()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[httpx.Client, AsyncClient, BlockingPortal]]:
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(mesh(tmp_path)) as (base_url, watcher),
        httpx.Client(base_url=base_url, timeout=30, limits=httpx.Limits(max_connections=1)) as client,
    ):
        yield client, watcher, portal


def answered_tasks(reply: httpx.Response) -> set[str]:
    """The ids of the tasks behind a successful answer (one per choice)."""
    if reply.headers["content-type"].startswith("text/event-stream"):
        first = next(line for line in reply.text.splitlines() if line.startswith("data: "))
        chunk = json.loads(first[6:])
        if "error" in chunk:
            return set()
        answer_id, indexes = chunk["id"], {
            json.loads(line[6:])["choices"][0]["index"] for line in reply.text.splitlines()
            if line.startswith("data: {") and json.loads(line[6:]).get("choices")}
    else:
        answer = reply.json()
        answer_id, indexes = answer["id"], {c["index"] for c in answer["choices"]}
    return {answer_id} if indexes == {0} else {f"{answer_id}-{i}" for i in indexes}


def test_tool_fields_get_a_4xx_or_an_answer_and_refusals_leave_nothing(
    running: tuple[httpx.Client, AsyncClient, BlockingPortal],
) -> None:
    http, watcher, portal = running
    answered: set[str] = set()

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies())
    def any_tool_body(body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        reply = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        check_answer(reply, raw)
        if reply.status_code == 200:
            answered.update(answered_tasks(reply))

    any_tool_body()
    # A last request: once its task is in the watcher's replica, so is every earlier one.
    last = http.post("/v1/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "end"}]})
    answered.add(last.json()["id"])

    async def board_tasks() -> set[str]:
        with anyio.fail_after(20):
            while not any(e.id == last.json()["id"] for e in watcher.snapshot().done):
                await watcher.wait_changed(0.5)
        snapshot = watcher.snapshot()
        return {e.id for column in (snapshot.todo, snapshot.prepared, snapshot.doing, snapshot.done) for e in column}

    on_board = portal.call(board_tasks)
    assert len(answered) > 50, "enough of the drawn requests were valid to mean something"
    assert on_board == answered
