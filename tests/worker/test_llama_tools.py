"""Tool calls, structured output and logprobs on the bundled model, grammar-constrained.

Every answer is checked as a client would: the calls parse (`split_output`), name a tool that
was offered, and their arguments are valid against that tool's schema (`jsonschema`), over many
seeds at a high temperature so that the grammar, not luck, is what holds the model.
"""

from __future__ import annotations

import json
import math
from typing import Any

import anyio
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kanbanmesh.board.schema import TaskRequest
from kanbanmesh.board.tool_calls import split_output
from kanbanmesh.errors import BackendError
from tests.worker.llama_direct import started_backend
from tests.worker.test_llama_backend import collect
from worker.backends.base import Finished, GenerationRequest
from worker.backends.llama import LlamaBackend

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SLOTS = 4
SEEDS = range(5)
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
EVENT = {  # nested objects, an array of objects, enums, optional fields
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "when": {
            "type": "object",
            "properties": {"day": {"type": "integer"}, "month": {"enum": ["jan", "feb", "mar"]}},
            "required": ["day", "month"],
        },
        "attendees": {
            "type": "array", "minItems": 1, "maxItems": 3,
            "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                                       "vip": {"type": "boolean"}},
                      "required": ["name"]},
        },
    },
    "required": ["title", "when", "attendees"],
}
SEARCH = {
    "type": "object",
    "properties": {"query": {"type": "string", "maxLength": 40}, "limit": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4}},
    "required": ["query"],
}
SCHEMAS = {"get_weather": WEATHER, "create_event": EVENT, "search_docs": SEARCH}
TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name.replace('_', ' ')}", "parameters": schema}}
         for name, schema in SCHEMAS.items()]
QUESTION = "Plan a lunch with Ana on March 3 in Paris, and tell me the weather there."


@pytest.fixture(scope="module")
def backend() -> Any:
    with started_backend(n_ctx=1024, threads=1, slots=SLOTS) as loaded:
        yield loaded


def request(messages: list[dict[str, Any]] | None = None, **fields: Any) -> GenerationRequest:
    """A generation request made as the worker makes it from a task's fields."""
    task = TaskRequest.model_validate({"id": "t", "messages": messages or [{"role": "user", "content": QUESTION}],
                                       **fields})
    return GenerationRequest.for_task(task)


async def run_all(backend: LlamaBackend, requests: list[GenerationRequest]) -> list[tuple[str, Finished]]:
    """Every request's text and end, `SLOTS` at a time (the engine batches them)."""
    results: list[tuple[str, Finished] | None] = [None] * len(requests)
    limiter = anyio.CapacityLimiter(SLOTS)

    async def one(i: int) -> None:
        async with limiter:
            chunks, finished = await collect(backend.generate(requests[i]))
            results[i] = ("".join(chunks), finished)

    with anyio.fail_after(1200):
        async with anyio.create_task_group() as tg:
            for i in range(len(requests)):
                tg.start_soon(one, i)
    return [r for r in results if r is not None]


def check_calls(text: str, allowed: set[str]) -> list[tuple[str, dict[str, Any]]]:
    content, calls = split_output(text)
    assert content.strip() == "", text
    checked = []
    for call in calls:
        assert call.name in allowed, text
        arguments = json.loads(call.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.name])
        checked.append((call.name, arguments))
    return checked


def sampled(seed: int, **more: Any) -> dict[str, Any]:
    return {"seed": seed, "temperature": 1.0, "max_tokens": 200, **more}


@pytest.mark.timeout(600)  # 8 generations of up to 200 tokens, batched, on a busy CPU
@pytest.mark.parametrize("choice", ["required", *({"type": "function", "function": {"name": n}} for n in SCHEMAS)],
                         ids=["required", *SCHEMAS])
async def test_required_and_named_calls_are_schema_valid_over_seeds(backend: LlamaBackend, choice: Any) -> None:
    requests = [request(tools=TOOLS, tool_choice=choice, parallel_tool_calls=False, params=sampled(seed))
                for seed in SEEDS]
    allowed = set(SCHEMAS) if choice == "required" else {choice["function"]["name"]}
    for seed, (text, finished) in zip(SEEDS, await run_all(backend, requests), strict=True):
        assert finished.finish_reason == "stop", (seed, text)
        calls = check_calls(text, allowed)
        assert len(calls) == 1, (seed, text)


@pytest.mark.timeout(600)
async def test_parallel_calls_are_one_or_more_valid_calls(backend: LlamaBackend) -> None:
    requests = [request(tools=TOOLS, tool_choice="required", params=sampled(seed, max_tokens=400)) for seed in SEEDS]
    for text, finished in await run_all(backend, requests):
        if finished.finish_reason == "length":  # cut inside a later call: the earlier ones stand
            text = text[: text.rfind("<tool_call>")]
        assert 1 <= len(check_calls(text, set(SCHEMAS))), text


@pytest.mark.timeout(600)
async def test_auto_answers_text_or_valid_calls(backend: LlamaBackend) -> None:
    requests = [request(tools=TOOLS, params=sampled(seed, max_tokens=120)) for seed in SEEDS]
    for text, finished in await run_all(backend, requests):
        if finished.finish_reason == "stop":
            _, calls = split_output(text)  # never malformed: the grammar holds once it began
            for call in calls:
                jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


@pytest.mark.timeout(600)
async def test_json_schema_answers_parse_and_validate_over_seeds(backend: LlamaBackend) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "event", "schema": EVENT}}
    requests = [request(response_format=fmt, params=sampled(seed)) for seed in range(8)]
    for text, finished in await run_all(backend, requests):
        assert finished.finish_reason == "stop", text
        jsonschema.validate(json.loads(text), EVENT)


@pytest.mark.timeout(600)
async def test_json_object_answers_are_objects(backend: LlamaBackend) -> None:
    messages = [{"role": "user", "content": "Describe Paris in JSON with a few short fields."}]
    requests = [request(messages, response_format={"type": "json_object"}, params=sampled(seed, max_tokens=300))
                for seed in range(4)]
    for text, finished in await run_all(backend, requests):
        if finished.finish_reason == "stop":
            assert isinstance(json.loads(text), dict), text


async def test_logprobs_are_those_of_the_generated_tokens(backend: LlamaBackend) -> None:
    top = 5
    (text, finished), = await run_all(backend, [request(
        [{"role": "user", "content": "Name three colours."}],
        params={"temperature": 0.7, "seed": 3, "max_tokens": 24, "logprobs": True, "top_logprobs": top})])
    assert finished.logprobs is not None
    items = finished.logprobs.content
    assert len(items) == finished.usage.completion_tokens > 0
    assert b"".join(bytes(item.bytes or []) for item in items).decode() == text
    for item in items:
        assert item.logprob <= 0.0 and math.isfinite(item.logprob)
        ranks = [t.logprob for t in item.top_logprobs]
        assert len(ranks) == top and ranks == sorted(ranks, reverse=True)
        assert item.logprob <= ranks[0] + 1e-9  # the likeliest token is at least as likely
        assert math.fsum(math.exp(r) for r in ranks) <= 1.0 + 1e-6


async def test_no_logprobs_unless_asked(backend: LlamaBackend) -> None:
    (_, finished), = await run_all(backend, [request(params={"max_tokens": 4, "temperature": 0.0})])
    assert finished.logprobs is None


# The next turn of an agent loop: the model's call and the tool's result.
AGENT_LOOP = [
    {"role": "developer", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny, 21 degrees"},
]


async def test_an_agent_loop_turn_renders_and_answers(backend: LlamaBackend) -> None:
    req = request(AGENT_LOOP, tools=TOOLS[:1], params={"temperature": 0.0, "max_tokens": 40})
    (text, finished), = await run_all(backend, [req])
    assert finished.finish_reason in ("stop", "length") and text.strip()


async def test_a_schema_the_converter_cannot_compile_fails_with_bad_params(backend: LlamaBackend) -> None:
    for parameters in ({"type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}},
                       {"type": "object", "properties": {"x": {"type": "string", "pattern": "no anchors"}}}):
        tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
        with pytest.raises(BackendError) as caught:
            await collect(backend.generate(request(tools=tools, tool_choice="required")))
        assert caught.value.code == "bad_params" and "parameters of tool 'f'" in caught.value.message



_LEAVES = st.sampled_from([
    {"type": "string", "maxLength": 12}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"},
    {"enum": ["red", "green", 3, None]}, {"const": "fixed"},
    {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 6}]},
])
_KEYS = st.from_regex(r"[a-z][a-z_]{0,7}", fullmatch=True)
SCHEMA_CLASS = st.recursive(
    _LEAVES,
    lambda inner: st.dictionaries(_KEYS, inner, min_size=1, max_size=3).flatmap(
        lambda props: st.sets(st.sampled_from(sorted(props))).map(lambda required: {
            "type": "object", "properties": props, "required": sorted(required), "additionalProperties": False})),
    max_leaves=6,
).filter(lambda schema: schema.get("type") == "object")


@pytest.mark.timeout(600)
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMA_CLASS, seed=st.integers(0, 1000))
def test_calls_are_valid_for_a_class_of_schemas(backend: LlamaBackend, schema: dict[str, Any], seed: int) -> None:
    """Arbitrary nested schemas (enums, consts, unions, arrays, optional fields): the named
    call's arguments always validate."""
    tools = [{"type": "function", "function": {"name": "act", "parameters": schema}}]
    req = request(tools=tools, tool_choice={"type": "function", "function": {"name": "act"}},
                  parallel_tool_calls=False, params=sampled(seed, max_tokens=300))
    [(text, finished)] = anyio.run(run_all, backend, [req])
    assert finished.finish_reason == "stop", text
    _, calls = split_output(text)
    assert [call.name for call in calls] == ["act"], text
    jsonschema.validate(json.loads(calls[0].arguments), schema)


async def test_greedy_calls_are_valid_and_reproducible(backend: LlamaBackend) -> None:
    """At temperature 0 the grammar-checked draw is deterministic, as an unconstrained one is."""
    params = {"temperature": 0.0, "seed": 1, "max_tokens": 200, "cache_prompt": False}
    requests = [request(tools=TOOLS, tool_choice="required", parallel_tool_calls=False, params=params)] * 2
    (first, end), (second, _) = await run_all(backend, requests)
    assert first == second and end.finish_reason == "stop"
    assert len(check_calls(first, set(SCHEMAS))) == 1
