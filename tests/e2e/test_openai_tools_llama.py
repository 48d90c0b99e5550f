"""Tool calling, structured output, logprobs and `n` through the OpenAI endpoint on the bundled
model (SmolLM2 135M on the llama backend), driven by the official `openai` package.

The model is small: what is checked is what the grammar guarantees and the endpoint carries
(a call names an offered function, its arguments validate against that function's schema, a
JSON answer validates against its schema, streamed and whole answers agree), over many seeds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import openai
import pytest

from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.e2e.backend_workers import running_worker
from tests.worker.llama_direct import loaded_backend
from worker.backends.models import BUNDLED_NAME

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False},
}}
ALARM = {"type": "function", "function": {
    "name": "set_alarm", "description": "Set an alarm",
    "parameters": {"type": "object", "properties": {
        "hour": {"type": "integer", "minimum": 0, "maximum": 23}, "label": {"type": "string"}},
        "required": ["hour"]},
}}
TOOLS = [WEATHER, ALARM]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}  # type: ignore[index]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# Reproducible: the prompt read whole each time, not from the cache (README, "Requests").
FIXED: dict[str, Any] = {"max_tokens": 80, "extra_body": {"cache_prompt": False}}
SEEDS = range(6)
CITY = {"type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["name", "population"], "additionalProperties": False}


@pytest.fixture
async def oai(tmp_path: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    settings = Settings(port=0, data_dir=tmp_path, queue_timeout_s=60.0)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        async with (
            loaded_backend(n_ctx=2048, threads=1, slots=2) as backend,
            running_worker(url, backend, slots=2),
            openai.AsyncOpenAI(base_url="http" + url[2:] + "/v1", api_key="unused", max_retries=0,
                               timeout=300) as client,
        ):
            yield client
        tg.cancel_scope.cancel()


def check_calls(calls: Any, allowed: set[str]) -> None:
    assert calls, "the answer holds calls"
    for call in calls:
        assert call.type == "function" and call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


async def whole_and_streamed(oai: openai.AsyncOpenAI, **kwargs: Any) -> tuple[Any, Any]:
    whole = await oai.chat.completions.create(model=BUNDLED_NAME, **FIXED, **kwargs)
    async with oai.chat.completions.stream(model=BUNDLED_NAME, **FIXED, **kwargs) as stream:
        async for _ in stream:
            pass
        streamed = await stream.get_final_completion()
    return whole.choices[0], streamed.choices[0]


async def test_required_and_named_calls_are_valid_over_seeds(oai: openai.AsyncOpenAI) -> None:
    named = {"type": "function", "function": {"name": "set_alarm"}}
    for seed in SEEDS:
        for tool_choice, allowed in (("required", {"get_weather", "set_alarm"}), (named, {"set_alarm"})):
            whole, streamed = await whole_and_streamed(
                oai, messages=ASK, tools=TOOLS, tool_choice=tool_choice, seed=seed, temperature=0.8)
            check_calls(whole.message.tool_calls, allowed)
            assert whole.finish_reason == "tool_calls" and whole.message.content is None
            # The same seed streamed: the same calls, rebuilt by the client from the deltas.
            assert [c.function.model_dump() for c in streamed.message.tool_calls or []] == [
                c.function.model_dump() for c in whole.message.tool_calls or []]
            assert streamed.finish_reason == "tool_calls"


async def test_auto_and_none(oai: openai.AsyncOpenAI) -> None:
    for seed in SEEDS[:3]:
        whole, streamed = await whole_and_streamed(oai, messages=ASK, tools=TOOLS, seed=seed, temperature=0.8)
        if whole.message.tool_calls:  # auto: the model's choice; a call it makes is valid
            check_calls(whole.message.tool_calls, {"get_weather", "set_alarm"})
        else:
            assert whole.message.content and whole.finish_reason in ("stop", "length")
        assert (streamed.message.content or None) == (whole.message.content or None)
    whole, streamed = await whole_and_streamed(oai, messages=ASK, tools=TOOLS, tool_choice="none", temperature=0)
    assert whole.message.tool_calls is None and whole.message.content
    assert streamed.message.content == whole.message.content


async def test_a_tool_turn_round_trip(oai: openai.AsyncOpenAI) -> None:
    first = await oai.chat.completions.create(model=BUNDLED_NAME, messages=ASK, tools=[WEATHER],  # type: ignore[arg-type]
                                              tool_choice="required", temperature=0, **FIXED)
    [call] = first.choices[0].message.tool_calls or []
    messages: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 22 degrees."},
    ]
    whole, streamed = await whole_and_streamed(oai, messages=messages, tools=[WEATHER], tool_choice="none",
                                               temperature=0)
    assert whole.message.content and whole.message.tool_calls is None
    assert streamed.message.content == whole.message.content


async def test_response_formats_are_valid_over_seeds(oai: openai.AsyncOpenAI) -> None:
    city = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": CITY}}
    ask = [{"role": "user", "content": "Describe Paris as JSON."}]
    for seed in SEEDS:
        whole, streamed = await whole_and_streamed(oai, messages=ask, response_format=city, seed=seed,
                                                   temperature=0.8)
        for choice in (whole, streamed):
            assert choice.finish_reason == "stop", "the grammar ends the object within max_tokens"
            jsonschema.validate(json.loads(choice.message.content), CITY)
        assert streamed.message.content == whole.message.content
        anything = await oai.chat.completions.create(
            model=BUNDLED_NAME, messages=ask, response_format={"type": "json_object"}, seed=seed,  # type: ignore[arg-type]
            temperature=0.8, max_tokens=200, extra_body={"cache_prompt": False})
        if anything.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(anything.choices[0].message.content or ""), dict)


async def test_logprobs_and_n(oai: openai.AsyncOpenAI) -> None:
    whole, streamed = await whole_and_streamed(oai, messages=ASK, logprobs=True, top_logprobs=3, temperature=0,
                                               max_completion_tokens=12)
    for choice in (whole, streamed):
        tokens = choice.logprobs.content
        assert tokens and len(tokens) <= 12
        for token in tokens:
            assert token.logprob <= 0 and len(token.top_logprobs) == 3
            assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)
    assert [t.token for t in streamed.logprobs.content] == [t.token for t in whole.logprobs.content]
    assert "".join(t.token for t in whole.logprobs.content) == whole.message.content

    several = await oai.chat.completions.create(model=BUNDLED_NAME, messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                                tool_choice="required", n=3, seed=5, temperature=1.0, **FIXED)
    assert [c.index for c in several.choices] == [0, 1, 2]
    for choice in several.choices:
        check_calls(choice.message.tool_calls, {"get_weather", "set_alarm"})
