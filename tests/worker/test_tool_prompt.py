"""Tools in the prompt (the model's template, or the generic form) and the grammars built for
them, without running a model: what the model reads, and what llama.cpp accepts as a grammar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from llama_cpp._internals import LlamaModel

from kanbanmesh.board.schema import TaskRequest
from kanbanmesh.board.tool_calls import render_call
from kanbanmesh.errors import BackendError
from worker.backends.base import GenerationRequest
from worker.backends.chat_format import _jinja, resolve_chat_format
from worker.backends.grammars import grammar_for
from worker.backends.llama_loader import read_vocabulary
from worker.backends.llama_sampler import free_sampler, grammar_sampler
from worker.backends.tool_prompt import TOOLS_INSTRUCTION

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
# Lengths the converter would nest one group per repetition for (llama.cpp's parser refuses
# some thousand levels and overflows its stack at 20,000): left to the check after generation.
LONG = {"type": "object", "properties": {
    "s": {"type": "string", "maxLength": 20_000}, "t": {"type": "string", "minLength": 10**9},
    "a": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 50_000},
    "p": {"type": "string", "pattern": "^a{0,1000000000}$"}, "q": {"type": "string", "pattern": "^[a-z]{2,8}$"}}}
BOUNDED = {"type": "object", "properties": {  # integer ranges: worker/backends/integer_ranges.py
    "hour": {"type": "integer", "minimum": 0, "maximum": 23}, "at": {"type": "integer", "exclusiveMinimum": -40},
    "integer": {"type": "integer", "maximum": -7}, "days": {"type": "array", "items": {"type": "integer", "minimum": 1}},
    "either": {"anyOf": [{"type": "integer", "minimum": 100}, {"type": "string", "maxLength": 3}]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "now"}}]
LOOP = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny"},
]


def request(messages: list[dict[str, Any]] | None = None, **fields: Any) -> GenerationRequest:
    task = TaskRequest.model_validate({"id": "t", "messages": messages or [{"role": "user", "content": "hi"}], **fields})
    return GenerationRequest.for_task(task)


def test_smollm2_gets_the_generic_form_with_the_agent_loop(bundled_gguf: Path) -> None:
    metadata, specials = read_vocabulary(bundled_gguf)
    text = resolve_chat_format(metadata, specials).render(request(LOOP, tools=TOOLS)).text
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\n" + TOOLS_INSTRUCTION)
    assert json.dumps(TOOLS[0]["function"]) in system and system.endswith("Be brief.")
    assert "You are a helpful AI assistant named SmolLM" not in text  # our system turn replaced it
    assert f"<|im_start|>assistant\n{render_call('get_weather', json.dumps({'city': 'Paris'}))}<|im_end|>" in text
    assert '<|im_start|>user\n<tool_response>{"name": "get_weather", "content": "sunny"}</tool_response>' in text


def test_tool_choice_none_keeps_tools_out_of_the_prompt(bundled_gguf: Path) -> None:
    metadata, specials = read_vocabulary(bundled_gguf)
    text = resolve_chat_format(metadata, specials).render(request(LOOP, tools=TOOLS, tool_choice="none")).text
    assert TOOLS_INSTRUCTION not in text and "<tool_response>" in text  # the loop's turns stay


def test_gemma_format_takes_the_generic_form(template_free_gguf: Path) -> None:
    metadata, specials = read_vocabulary(template_free_gguf)
    text = resolve_chat_format(metadata, specials, "gemma").render(request(LOOP, tools=TOOLS)).text
    assert TOOLS_INSTRUCTION in text and "<tool_response>" in text and "<tool_call>" in text


def test_a_template_that_reads_tools_renders_them_itself(bundled_gguf: Path) -> None:
    _, specials = read_vocabulary(bundled_gguf)
    template = (
        "{% for t in tools or [] %}TOOL {{ t.function.name }}\n{% endfor %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% for c in m.tool_calls or [] %} CALL {{ c.function.name }}{% endfor %}\n{% endfor %}"
    )
    chat = _jinja("tool_template", template, specials)
    text = chat.render(request(LOOP, tools=TOOLS)).text
    # (trim_blocks: a newline after a block tag goes)
    assert text.startswith("TOOL get_weather\nTOOL now\nsystem: Be brief.")
    assert "assistant:  CALL get_weather" in text and "tool: sunny" in text and "<tool_call>" not in text


@pytest.fixture(scope="module")
def vocab(bundled_gguf: Path) -> Any:
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(bundled_gguf), params=params, verbose=False)
    yield model.vocab
    model.close()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("fields", [
    {"tools": TOOLS, "tool_choice": "required"},
    {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "now"}}},
    {"tools": TOOLS},
    {"tools": TOOLS, "response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": WEATHER}}},
    {"response_format": {"type": "json_object"}},
    {"tools": [{"type": "function", "function": {"name": "b", "parameters": BOUNDED}}], "tool_choice": "required"},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "b", "schema": BOUNDED}}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "long", "schema": LONG}}},
])
def test_every_grammar_llama_cpp_accepts(vocab: Any, fields: dict[str, Any]) -> None:
    grammar = grammar_for(request(**fields))
    assert grammar is not None
    assert grammar.lazy == ("tools" in fields and "tool_choice" not in fields and "response_format" not in fields)
    free_sampler(grammar_sampler(vocab, grammar))


def test_the_grammar_holds_the_offered_functions_only() -> None:
    grammar = grammar_for(request(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "now"}}))
    assert grammar is not None and '\\"now\\"' in grammar.text and "get_weather" not in grammar.text
    one = grammar_for(request(tools=TOOLS, tool_choice="required", parallel_tool_calls=False))
    assert one is not None and "calls ::= tool-call\n" in one.text + "\n"


def test_no_grammar_for_text() -> None:
    assert grammar_for(request()) is None
    assert grammar_for(request(tools=TOOLS, tool_choice="none")) is None
    assert grammar_for(request(response_format={"type": "text"})) is None


def test_remote_refs_are_refused_before_the_converter_sees_them() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}}}]
    with pytest.raises(BackendError, match="only local \\$ref") as caught:
        grammar_for(request(tools=tools, tool_choice="required"))
    assert caught.value.code == "bad_params"


def test_integer_bounds_become_range_rules() -> None:
    grammar = grammar_for(request(response_format={"type": "json_schema", "json_schema": {"name": "b", "schema": BOUNDED}}))
    assert grammar is not None
    rules = dict(line.split(" ::= ", 1) for line in grammar.text.splitlines())
    assert rules["json-hour"] == '([0-9] | "1" [0-9] | "2" [0-3]) space'
    assert rules["json-integer"].startswith('("-" [7-9] | "-" [1-9] [0-9] |')  # not the converter's `integer`
    assert rules["json-days-item"].startswith("([1-9] | [1-9] [0-9] |")  # an array's items too
    assert '[1-9] [0-9] [0-9]' in grammar.text  # anyOf's integer branch: from 100 on


def test_an_integer_range_without_integers_fails_the_task() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5, "exclusiveMaximum": 5}}}
    with pytest.raises(BackendError, match="no integer") as caught:
        grammar_for(request(tools=[{"type": "function", "function": {"name": "f", "parameters": schema}}],
                            tool_choice="required"))
    assert caught.value.code == "bad_params"


def test_long_lengths_are_left_out_of_the_grammar_short_ones_kept() -> None:
    grammar = grammar_for(request(response_format={"type": "json_schema", "json_schema": {"name": "l", "schema": LONG}}))
    assert grammar is not None and len(grammar.text) < 10_000
    rules = dict(line.split(" ::= ", 1) for line in grammar.text.splitlines())
    for name in "stp":  # any string: checked after generation
        assert rules[f"json-{name}-kv"].endswith(" string")
    assert rules["json-a"] == '"[" space integer ("," space integer)* "]" space'  # one item or more
    assert rules["json-q"].startswith('"\\"" json-q-1 json-q-1 (')  # a short quantifier stays


def test_a_grammar_nested_too_deep_is_refused_before_llama_cpp() -> None:
    deep = {"type": "object", "properties": {"p": {"type": "string", "pattern": "^" + "(" * 600 + "a" + ")" * 600 + "$"}}}
    with pytest.raises(BackendError, match="nested") as caught:
        grammar_for(request(response_format={"type": "json_schema", "json_schema": {"name": "d", "schema": deep}}))
    assert caught.value.code == "bad_params"
