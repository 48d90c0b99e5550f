"""Tool calling, structured output, logprobs and `n` through the OpenAI endpoint on the bundled
model (SmolLM2 135M on the llama backend), driven by the official `openai` package.

The model is small: what is checked is what the grammar guarantees and the endpoint carries
(a call names an offered function, its arguments validate against that function's schema, a
JSON answer validates against its schema), streaming and not, over many seeds. Two runs of the
same request need not agree (the backend's sampling is not reproducible across requests), so
each answer is checked on its own.
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
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageToolCall
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_message_tool_call import Function

from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.e2e.backend_workers import running_worker
from tests.worker.llama_direct import loaded_backend
from worker.backends.models import BUNDLED_NAME

# A few minutes each on a shared CPU core.
pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(900)]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False},
}}
ALARM = {"type": "function", "function": {
    "name": "set_alarm", "description": "Set an alarm",
    "parameters": {"type": "object", "properties": {
        # Integer bounds and string lengths: the grammar enforces both.
        "hour": {"type": "integer", "minimum": 0, "maximum": 23}, "label": {"type": "string", "maxLength": 20}},
        "required": ["hour"]},
}}
TOOLS = [WEATHER, ALARM]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}  # type: ignore[index]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# Room for a call with a free-text string in it: a call cut at `length` is text, not a call.
FIXED: dict[str, Any] = {"max_tokens": 200}
SEEDS = range(4)
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


async def whole_and_streamed(oai: openai.AsyncOpenAI, **kwargs: Any) -> list[Any]:
    """The request's choice answered whole, then streamed: its message as the client adds up
    the deltas (by hand: the `openai` package's helper raises at `length`)."""
    whole = await oai.chat.completions.create(model=BUNDLED_NAME, **FIXED, **kwargs)
    stream = await oai.chat.completions.create(model=BUNDLED_NAME, stream=True, **FIXED, **kwargs)
    content, calls, finish, logprobs = "", [], None, []
    async for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for piece in choice.delta.tool_calls or []:
                if piece.id is not None:
                    assert piece.index == len(calls) and piece.function and piece.function.arguments == ""
                    calls.append(ChatCompletionMessageToolCall(id=piece.id, type="function", function=Function(
                        name=piece.function.name or "", arguments="")))
                elif piece.function is not None:
                    calls[piece.index].function.arguments += piece.function.arguments or ""
            finish = choice.finish_reason or finish
            logprobs += choice.logprobs.content or [] if choice.logprobs else []
    message = ChatCompletionMessage(role="assistant", content=content or None, tool_calls=calls or None)
    streamed = Choice(index=0, message=message, finish_reason=finish or "stop",
                      logprobs=ChoiceLogprobs(content=logprobs) if logprobs else None)
    return [whole.choices[0], streamed]


async def test_required_and_named_calls_are_valid_over_seeds(oai: openai.AsyncOpenAI) -> None:
    named = {"type": "function", "function": {"name": "set_alarm"}}
    answers = []
    for seed in SEEDS:
        for tool_choice, allowed in (("required", {"get_weather", "set_alarm"}), (named, {"set_alarm"})):
            for choice in await whole_and_streamed(oai, messages=ASK, tools=TOOLS, tool_choice=tool_choice,
                                                   parallel_tool_calls=seed % 2 == 0, seed=seed, temperature=0.8):
                answers.append(choice.finish_reason)
                if choice.finish_reason == "length":
                    continue  # a call cut short: text, as OpenAI leaves it
                assert choice.finish_reason == "tool_calls" and choice.message.content is None
                check_calls(choice.message.tool_calls, allowed)
                if seed % 2:
                    assert len(choice.message.tool_calls) == 1, "parallel_tool_calls: false"
    assert answers.count("tool_calls") >= len(answers) - 2, answers


async def test_auto_and_none(oai: openai.AsyncOpenAI) -> None:
    for seed in SEEDS[:3]:
        for choice in await whole_and_streamed(oai, messages=ASK, tools=TOOLS, seed=seed, temperature=0.8):
            if choice.message.tool_calls:  # auto: the model's choice; a call it makes is valid
                check_calls(choice.message.tool_calls, {"get_weather", "set_alarm"})
            else:
                assert choice.message.content and choice.finish_reason in ("stop", "length")
    for choice in await whole_and_streamed(oai, messages=ASK, tools=TOOLS, tool_choice="none", temperature=0):
        assert choice.message.tool_calls is None and choice.message.content


async def test_a_tool_turn_round_trip(oai: openai.AsyncOpenAI) -> None:
    first = await oai.chat.completions.create(model=BUNDLED_NAME, messages=ASK, tools=[WEATHER],  # type: ignore[arg-type]
                                              tool_choice="required", parallel_tool_calls=False,
                                              temperature=0, **FIXED)
    [call] = first.choices[0].message.tool_calls or []
    messages: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 22 degrees."},
    ]
    for choice in await whole_and_streamed(oai, messages=messages, tools=[WEATHER], temperature=0):
        # The tools still offered (`auto`), as agents do: text or another valid call.
        if choice.message.tool_calls:
            check_calls(choice.message.tool_calls, {"get_weather"})
        else:
            assert choice.message.content


async def test_response_formats_are_valid_over_seeds(oai: openai.AsyncOpenAI) -> None:
    city = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": CITY}}
    ask = [{"role": "user", "content": "Describe Paris as JSON."}]
    finished = 0
    for seed in SEEDS:
        for choice in await whole_and_streamed(oai, messages=ask, response_format=city, seed=seed, temperature=0.8):
            if choice.finish_reason == "stop":
                jsonschema.validate(json.loads(choice.message.content), CITY)
                finished += 1
        for choice in await whole_and_streamed(oai, messages=ask, response_format={"type": "json_object"},
                                               seed=seed, temperature=0.8):
            if choice.finish_reason == "stop":
                assert isinstance(json.loads(choice.message.content), dict)
                finished += 1
    assert finished >= 4 * len(SEEDS) - 3, "most answers end within max_tokens"


async def test_logprobs_and_n(oai: openai.AsyncOpenAI) -> None:
    for choice in await whole_and_streamed(oai, messages=ASK, logprobs=True, top_logprobs=3, temperature=0,
                                           max_completion_tokens=12):
        tokens = choice.logprobs.content
        assert tokens and len(tokens) <= 12
        assert "".join(t.token for t in tokens) == choice.message.content
        for token in tokens:
            assert token.logprob <= 0 and len(token.top_logprobs) == 3
            assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)

    several = await oai.chat.completions.create(model=BUNDLED_NAME, messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                                tool_choice="required", n=3, seed=5, temperature=1.0, **FIXED)
    assert [c.index for c in several.choices] == [0, 1, 2]
    for choice in several.choices:
        check_calls(choice.message.tool_calls, {"get_weather", "set_alarm"})
