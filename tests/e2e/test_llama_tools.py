"""Tool calls through the whole mesh on the bundled model: a task with `tools` submitted over
the websocket ends with `tool_calls`, `finish_reason: "tool_calls"` and the calls streamed in
`output`; an agent loop's next turn (the calls and their results) is answered; logprobs reach
the entry; a schema no grammar can be built from fails the task with `bad_params`."""

from __future__ import annotations

import json
import math

import anyio
import jsonschema
import pytest

from client_sdk import AsyncClient, TaskFailedError
from kanbanmesh.board.tool_calls import call_id, split_output
from tests.e2e.backend_workers import Shared, running_worker
from tests.worker.llama_direct import llama_fixtures
from tests.worker.test_llama_tools import AGENT_LOOP
from worker.backends.llama import LlamaBackend

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                           "parameters": WEATHER}}]

backend, _direct = llama_fixtures(n_ctx=1024, threads=1)


async def test_a_task_with_tools_ends_with_its_calls(server_url: str, backend: LlamaBackend) -> None:
    async with running_worker(server_url, Shared(backend)), AsyncClient(server_url) as client:
        await client.wait_for_workers(1, timeout_s=10)
        task = await client.submit(
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=TOOLS, tool_choice="required", params={"seed": 5, "temperature": 0.8, "max_tokens": 200},
        )
        with anyio.fail_after(180):
            streamed = "".join([chunk async for chunk in task.stream()])
            entry = await task.result()
    content, calls = split_output(streamed)
    assert calls and content.strip() == ""
    assert entry.finish_reason == "tool_calls" and entry.result == ""
    assert entry.tool_calls is not None and len(entry.tool_calls) == len(calls)
    for i, (written, parsed) in enumerate(zip(entry.tool_calls, calls, strict=True)):
        assert written.id == call_id(task.id, i) and written.type == "function"
        assert written.function.name == parsed.name == "get_weather"
        jsonschema.validate(json.loads(written.function.arguments), WEATHER)


async def test_an_agent_loop_turn_is_answered_with_logprobs(server_url: str, backend: LlamaBackend) -> None:
    async with running_worker(server_url, Shared(backend)), AsyncClient(server_url) as client:
        await client.wait_for_workers(1, timeout_s=10)
        task = await client.submit(messages=AGENT_LOOP, tools=TOOLS, tool_choice="none", params={
            "temperature": 0.0, "max_tokens": 40, "logprobs": True, "top_logprobs": 2})
        with anyio.fail_after(180):
            entry = await task.result()
    assert entry.result and entry.tool_calls is None and entry.finish_reason in ("stop", "length")
    assert entry.logprobs is not None and entry.usage is not None
    assert len(entry.logprobs.content) == entry.usage.completion_tokens
    assert b"".join(bytes(item.bytes or []) for item in entry.logprobs.content).decode() == entry.result
    assert all(item.logprob <= 0 and len(item.top_logprobs) == 2 for item in entry.logprobs.content)
    assert all(math.isfinite(item.logprob) for item in entry.logprobs.content)


async def test_a_schema_without_a_grammar_fails_the_task(server_url: str, backend: LlamaBackend) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": "not anchored"}}}}}]
    async with running_worker(server_url, Shared(backend)), AsyncClient(server_url) as client:
        await client.wait_for_workers(1, timeout_s=10)
        task = await client.submit("hi", tools=tools, tool_choice="required")
        with anyio.fail_after(60), pytest.raises(TaskFailedError) as failed:
            await task.result()
    assert failed.value.code == "bad_params" and "cannot be compiled to a grammar" in str(failed.value)
