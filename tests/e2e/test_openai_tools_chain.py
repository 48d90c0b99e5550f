"""Tools, structured output and logprobs across two meshes: the official `openai` client asks
mesh B, whose worker runs the OpenAI-compatible backend against mesh A's OpenAI endpoint,
whose worker answers (the scripted backend of tests/e2e/tool_workers.py). Every hop is real:
B's endpoint writes the task, B's worker passes the fields upstream, A's endpoint streams
`delta.tool_calls`, B's worker writes them back into its task's text and `tool_calls`, and B's
endpoint answers the client from them, streaming and not.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest

from kanbanmesh.board.tool_calls import call_id
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.e2e.backend_workers import running_worker
from tests.e2e.tool_workers import ScriptedToolBackend
from worker.backends.openai_http import OpenAIBackend, OpenAIConfig

pytestmark = pytest.mark.anyio

WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}
PARIS = [{"role": "user", "content": '{"city": "Paris"}'}]


@pytest.fixture
async def oai(tmp_path: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    async with anyio.create_task_group() as tg:
        upstream = await tg.start(serve, Settings(port=0, data_dir=tmp_path / "a", queue_timeout_s=10.0))
        mesh = await tg.start(serve, Settings(port=0, data_dir=tmp_path / "b", queue_timeout_s=10.0))
        relay = OpenAIBackend(OpenAIConfig(base_url="http" + upstream[2:] + "/v1", model="scripted"))
        async with (
            running_worker(upstream, ScriptedToolBackend(), slots=2),
            running_worker(mesh, relay, slots=2),
            openai.AsyncOpenAI(base_url="http" + mesh[2:] + "/v1", api_key="unused", max_retries=0) as client,
        ):
            yield client
        tg.cancel_scope.cancel()


async def test_calls_cross_two_meshes(oai: openai.AsyncOpenAI) -> None:
    for tool_choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        whole = await oai.chat.completions.create(model="scripted", messages=PARIS, tools=[WEATHER],  # type: ignore[arg-type]
                                                  tool_choice=tool_choice)  # type: ignore[arg-type]
        [call] = whole.choices[0].message.tool_calls or []
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
        assert call.id == call_id(whole.id, 0), "mesh B names the call after its own task"
        assert whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.content is None

        async with oai.chat.completions.stream(model="scripted", messages=PARIS, tools=[WEATHER],  # type: ignore[arg-type]
                                               tool_choice=tool_choice) as stream:  # type: ignore[arg-type]
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
        [streamed] = final.choices[0].message.tool_calls or []
        assert streamed.function.arguments == call.function.arguments
        assert final.choices[0].finish_reason == "tool_calls"

    # The round trip: the call and its result back, through both meshes.
    messages: list[Any] = [
        *PARIS,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": [{"type": "text", "text": "sunny"}]},
        {"role": "user", "content": "thanks"},
    ]
    answer = await oai.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content == "echo: thanks"


async def test_structured_output_and_logprobs_cross_two_meshes(oai: openai.AsyncOpenAI) -> None:
    city = {"type": "json_schema", "json_schema": {"name": "city", "schema": {
        "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}
    whole = await oai.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "a city"}],  # type: ignore[arg-type]
                                              response_format=city, logprobs=True, top_logprobs=1)  # type: ignore[arg-type]
    assert json.loads(whole.choices[0].message.content or "") == {"name": "name"}
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert "".join(t.token for t in logprobs.content) == whole.choices[0].message.content
    assert all(len(t.top_logprobs) == 1 for t in logprobs.content)
