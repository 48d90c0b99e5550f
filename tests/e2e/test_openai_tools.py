"""Tool calling, structured output, logprobs and `n` through the OpenAI endpoint, driven by the
official `openai` package, streaming and not.

A scripted backend (tests/e2e/tool_workers.py) writes known calls in the board's text form, so
that every delta can be checked against the text it came from; the bundled model's own calls
are tested in tests/e2e/test_openai_tools_llama.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

from client_sdk import AsyncClient, TaskStatus
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.tool_calls import call_id
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool
from tests.e2e.backend_workers import running_worker
from tests.e2e.tool_workers import ScriptedToolBackend

pytestmark = pytest.mark.anyio

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
PARIS = [{"role": "user", "content": '{"city": "Paris"}'}]
SECRET = "s" * 32


class Mesh:
    def __init__(self, url: str, pool: WorkerPool) -> None:
        self.url, self.pool = url, pool
        self.http = "http" + url[2:]

    async def entry(self, task_id: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.http) as http:
            reply = await http.get(f"/boards/default/tasks/{task_id}")
        assert reply.status_code == 200, reply.text
        return dict(reply.json()["entry"])


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    settings = Settings(port=0, data_dir=tmp_path, queue_timeout_s=5.0)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        async with running_worker(url, ScriptedToolBackend(), slots=4):
            yield Mesh(url, WorkerPool(url, tg))
        tg.cancel_scope.cancel()


@pytest.fixture
async def oai(mesh: Mesh) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=mesh.http + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def without_none(value: Any) -> Any:
    """An entry's value without the fields the HTTP read shows as null (unset)."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    return value


async def streamed(oai: openai.AsyncOpenAI, **kwargs: Any) -> list[Any]:
    stream = await oai.chat.completions.create(model="scripted", stream=True, **kwargs)
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("tool_choice", [None, "auto", "required", {"type": "function", "function": {"name": "get_weather"}}])
async def test_a_call_whole_and_streamed(mesh: Mesh, oai: openai.AsyncOpenAI, tool_choice: Any) -> None:
    choice = {} if tool_choice is None else {"tool_choice": tool_choice}
    whole = await oai.chat.completions.create(model="scripted", messages=PARIS, tools=[TIME, WEATHER] if choice else [WEATHER], **choice)
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    expected_name = "get_weather" if isinstance(tool_choice, dict) or tool_choice is None else "get_time"
    assert (call.type, call.function.name) == ("function", expected_name)
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id == call_id(whole.id, 0)
    entry = await mesh.entry(whole.id)
    assert entry["tools"][0]["function"]["name"] == ("get_time" if choice else "get_weather")
    assert entry.get("tool_choice") == tool_choice

    # Streaming: the official client's accumulator rebuilds the same answer from the deltas.
    async with oai.chat.completions.stream(
        model="scripted", messages=PARIS, tools=[TIME, WEATHER] if choice else [WEATHER], **choice,  # type: ignore[arg-type]
    ) as stream:
        chunks = [event.chunk async for event in stream if event.type == "chunk"]
        final = await stream.get_final_completion()
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    starts = [d.tool_calls[0] for d in deltas if d.tool_calls and d.tool_calls[0].id]
    pieces = [d.tool_calls[0].function.arguments for d in deltas if d.tool_calls and not d.tool_calls[0].id]
    assert len(starts) == 1 and starts[0].function.name == expected_name
    assert starts[0].function.arguments == "" and starts[0].type == "function"
    assert starts[0].id == call_id(chunks[0].id, 0) and starts[0].index == 0
    assert len(pieces) > 1, "the arguments streamed in pieces"
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert not any(d.content for d in deltas), "a call is not content"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert final.choices[0].message.tool_calls is not None
    assert final.choices[0].message.tool_calls[0].function.arguments == call.function.arguments


async def test_several_calls_in_one_answer(oai: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": '{"city": "Oslo", "twice": true}'}]
    whole = await oai.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER])  # type: ignore[arg-type]
    calls = whole.choices[0].message.tool_calls or []
    assert [c.id for c in calls] == [call_id(whole.id, 0), call_id(whole.id, 1)]
    chunks = await streamed(oai, messages=messages, tools=[WEATHER], parallel_tool_calls=True)
    indexes = [d.tool_calls[0].index for c in chunks if c.choices for d in [c.choices[0].delta] if d.tool_calls and d.tool_calls[0].id]
    assert indexes == [0, 1]


async def test_tool_choice_none_offers_no_tool(mesh: Mesh, oai: openai.AsyncOpenAI) -> None:
    whole = await oai.chat.completions.create(model="scripted", messages=PARIS, tools=[WEATHER], tool_choice="none")  # type: ignore[arg-type]
    assert whole.choices[0].message.content == 'echo: {"city": "Paris"}'
    assert whole.choices[0].message.tool_calls is None and whole.choices[0].finish_reason == "stop"
    assert (await mesh.entry(whole.id))["tool_choice"] == "none"


async def test_a_tool_turn_round_trip_reaches_the_task(mesh: Mesh, oai: openai.AsyncOpenAI) -> None:
    """The turns an agent sends after a call: the assistant's calls (content null), the tool's
    answer (text parts), under a developer instruction; each kind's parts are one text."""
    first = await oai.chat.completions.create(model="scripted", messages=PARIS, tools=[WEATHER])  # type: ignore[arg-type]
    calls = first.choices[0].message.tool_calls or []
    parts = [{"type": "text", "text": "sunny"}, {"type": "text", "text": "22 C"}]
    messages: list[Any] = [
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "system", "content": [{"type": "text", "text": "you are a weather bot"}]},
        *PARIS,
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": parts},
        {"role": "assistant", "content": [{"type": "text", "text": "It is sunny."}]},
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
    ]
    for stream in (False, True):
        answer = await oai.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER], stream=stream)
        if stream:
            chunks = [c async for c in answer]  # type: ignore[union-attr]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            task_id = chunks[0].id
        else:
            text, task_id = answer.choices[0].message.content, answer.id  # type: ignore[union-attr]
        assert text == "echo: thanks"
        turns = (await mesh.entry(task_id))["messages"]
        assert [t["role"] for t in turns] == ["system", "system", "user", "assistant", "tool", "assistant", "user"]
        assert turns[0]["content"] == "be brief" and turns[1]["content"] == "you are a weather bot"
        assert turns[3]["content"] == "" and turns[3]["tool_calls"][0]["id"] == calls[0].id
        assert turns[3]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": calls[0].function.arguments}
        assert turns[4]["tool_call_id"] == calls[0].id and turns[4]["content"] == "sunny\n22 C"
        assert turns[5]["content"] == "It is sunny." and turns[6]["content"] == "thanks"


@pytest.mark.parametrize("response_format", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
        "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}},
])
async def test_response_format_reaches_the_task(mesh: Mesh, oai: openai.AsyncOpenAI, response_format: Any) -> None:
    whole = await oai.chat.completions.create(model="scripted", messages=PARIS, response_format=response_format)
    chunks = await streamed(oai, messages=PARIS, response_format=response_format)
    for task_id in (whole.id, chunks[0].id):
        assert without_none((await mesh.entry(task_id))["response_format"]) == response_format
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


async def test_logprobs_whole_and_streamed(mesh: Mesh, oai: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "one two three four five"}]
    whole = await oai.chat.completions.create(model="scripted", messages=messages, logprobs=True, top_logprobs=2)  # type: ignore[arg-type]
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert "".join(t.token for t in logprobs.content) == whole.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.bytes == list(t.token.encode()) for t in logprobs.content)
    assert (await mesh.entry(whole.id))["params"]["top_logprobs"] == 2
    chunks = await streamed(oai, messages=messages, logprobs=True)
    with_logprobs = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert len(with_logprobs) == 1 and chunks[-1].choices[0].logprobs is not None, "in the last chunk"
    assert [t.token for t in with_logprobs[0].content or []] == [t.token for t in logprobs.content]
    plain = await oai.chat.completions.create(model="scripted", messages=messages)  # type: ignore[arg-type]
    assert plain.choices[0].logprobs is None


async def test_n_choices_are_n_tasks(mesh: Mesh, oai: openai.AsyncOpenAI) -> None:
    whole = await oai.chat.completions.create(model="scripted", messages=PARIS, tools=[WEATHER], n=3, seed=41)  # type: ignore[arg-type]
    assert [c.index for c in whole.choices] == [0, 1, 2]
    ids = [f"{whole.id}-{i}" for i in range(3)]
    for i, choice in enumerate(whole.choices):
        assert choice.message.tool_calls and choice.message.tool_calls[0].id == call_id(ids[i], 0)
    seeds = [(await mesh.entry(task_id))["params"]["seed"] for task_id in ids]
    assert seeds == [41, 42, 43]
    assert whole.usage is not None and whole.usage.prompt_tokens == 3
    assert whole.usage.completion_tokens == 3 * (whole.usage.completion_tokens // 3) > 0

    stream = await oai.chat.completions.create(  # type: ignore[call-overload]
        model="scripted", messages=[{"role": "user", "content": "a b c"}], n=2, stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    texts: dict[int, str] = {0: "", 1: ""}
    finished = set()
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert texts == {0: "echo: a b c", 1: "echo: a b c"} and finished == {0, 1}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    completions = await oai.completions.create(model="scripted", prompt="x y", n=2)
    assert [c.text for c in completions.choices] == ["echo: x y", "echo: x y"]


async def test_a_malformed_call_ends_the_stream_with_an_error_event(oai: openai.AsyncOpenAI) -> None:
    garbage = [{"role": "user", "content": "garbage"}]
    with pytest.raises(openai.APIError) as failed:
        await streamed(oai, messages=garbage, tools=[WEATHER])
    assert "malformed tool call" in str(failed.value)
    # Not streaming: the worker leaves text that is not a call as text.
    whole = await oai.chat.completions.create(model="scripted", messages=garbage, tools=[WEATHER])  # type: ignore[arg-type]
    assert whole.choices[0].message.content is not None and "before" in whole.choices[0].message.content
    # Without tools nobody looks for calls in the text.
    plain = await streamed(oai, messages=garbage)
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices).startswith("before <tool_call>")


NESTED: dict[str, Any] = {"type": "object"}
for _ in range(20):
    NESTED = {"type": "object", "properties": {"a": NESTED}}
# (extra body fields, the param named, the code)
REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice", "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name", "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name", "invalid_value"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": 3}}}]},
     "tools[0].function.parameters", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": NESTED}}]},
     "tools[0].function.parameters", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(65)]}, "tools", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": "x" * 9000}}]},
     "tools[0].function.description", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$schema": 5}}}]},
     "tools[0].function.parameters", "invalid_value"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$schema": ["a"]}}}},
     "response_format.json_schema.schema", "invalid_value"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"pattern": "("}}}},
     "response_format.json_schema.schema", "invalid_value"),
    ({"response_format": {"type": "xml"}}, "response_format", "invalid_type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "missing_required_parameter"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}}},
     "response_format.json_schema.schema", "invalid_value"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"properties": {"p": {"description": "x" * 40_000}}}}}},
     "response_format.json_schema.schema", "invalid_value"),
    ({"top_logprobs": 3}, "top_logprobs", "invalid_value"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"logprobs": "yes"}, "logprobs", "invalid_type"),
    ({"n": 9}, "n", "invalid_value"),
    ({"n": 2, "conversation": "c1"}, "n", "invalid_value"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "missing_required_parameter"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content", "missing_required_parameter"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "c1"}]}, "messages[0].tool_call_id", "invalid_value"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": "x", "tool_call_id": "c1"}]}, "messages[0].tool_call_id", "invalid_value"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages[0].tool_calls", "invalid_value"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}]},
     "messages[0].tool_calls[0].function", "missing_required_parameter"),
]


async def test_what_cannot_be_answered_is_refused_by_name(mesh: Mesh, oai: openai.AsyncOpenAI) -> None:
    for extra, param, code in REFUSED:
        with pytest.raises(openai.BadRequestError) as refused:
            await oai.chat.completions.create(model="scripted", messages=PARIS, extra_body=extra)  # type: ignore[arg-type]
        assert (refused.value.param, refused.value.code) == (param, code), (extra, refused.value.message)
        assert refused.value.type == "invalid_request_error"
    async with AsyncClient(mesh.url) as watcher:
        snapshot = watcher.snapshot()
    assert not (snapshot.todo or snapshot.prepared or snapshot.doing or snapshot.done), "nothing was created"


async def test_n_is_all_or_nothing_against_the_owner_limits(tmp_path: Path) -> None:
    """Three choices are three tasks of the key's owner: over `max_open_tasks` (2), none of
    them is created."""
    settings = Settings(port=0, data_dir=tmp_path / "limits", auth_secret=SECRET,  # type: ignore[arg-type]
                        queue_timeout_s=5.0, max_open_tasks=2)
    alice = create_token(SECRET, Identity(subject="alice", role=TokenRole.CLIENT, boards=["default"]), 600)
    admin = create_token(SECRET, Identity(subject="ops", role=TokenRole.ADMIN, boards=["default"]), 600)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        async with openai.AsyncOpenAI(base_url="http" + url[2:] + "/v1", api_key=alice, max_retries=0) as oai:
            with pytest.raises(openai.RateLimitError):
                await oai.chat.completions.create(model="", messages=PARIS, n=3)  # type: ignore[arg-type]
            async with AsyncClient(url, token=admin) as watcher:
                snapshot = watcher.snapshot()
        tg.cancel_scope.cancel()
    assert not snapshot.todo, "none of the three was created"


LONG = [{"role": "user", "content": " ".join(f"w{i}" for i in range(100))}]  # ~10 s of slow echo


async def cancelled_ids(watcher: AsyncClient, count: int) -> set[str]:
    with anyio.fail_after(15):
        while len(done := {e.id for e in watcher.snapshot().done if e.status is TaskStatus.CANCELLED}) < count:
            await watcher.wait_changed(0.5)
    return done


async def test_a_client_that_hangs_up_cancels_every_choice(mesh: Mesh, oai: openai.AsyncOpenAI) -> None:
    await mesh.pool.start(delay_ms=100, slots=4)
    async with AsyncClient(mesh.url) as watcher:
        stream = await oai.chat.completions.create(model="echo", messages=LONG, n=2, stream=True)  # type: ignore[call-overload]
        async for chunk in stream:
            if chunk.choices and (chunk.choices[0].delta.content or "").startswith("w"):
                break
        await stream.close()
        assert await cancelled_ids(watcher, 2) == {f"{chunk.id}-0", f"{chunk.id}-1"}

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: oai.chat.completions.create(model="echo", messages=LONG, n=2))  # type: ignore[arg-type]
            with anyio.fail_after(15):
                while len(watcher.snapshot().doing) < 2:
                    await watcher.wait_changed(0.5)
            tg.cancel_scope.cancel()  # hang up before the answer
        assert len(await cancelled_ids(watcher, 4)) == 4
