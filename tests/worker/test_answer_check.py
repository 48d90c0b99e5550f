"""The check after generation: an answer whose calls or JSON break their schemas fails closed.

Crafted answers, as a backend that did not enforce a keyword (a grammar that cannot, an
upstream that does not) would write them, go through `AnswerCheck`; the model's own answers are
checked in tests/worker/test_llama_tools.py and tests/worker/test_grammar_ranges.py.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanbanmesh.board.schema import TaskRequest
from kanbanmesh.board.tool_calls import render_call
from kanbanmesh.errors import BackendError
from worker.backends.answer_check import AnswerCheck
from worker.backends.base import GenerationRequest

ALARM = {
    "type": "object",
    "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                   "label": {"type": "string", "maxLength": 8},
                   "ratio": {"type": "number", "exclusiveMinimum": 0.5},
                   "day": {"type": "string", "format": "date"},
                   "note": {"type": "string", "maxLength": 1000}},  # longer than a grammar holds
    "required": ["hour"],
}
TOOLS = [{"type": "function", "function": {"name": "set_alarm", "parameters": ALARM}},
         {"type": "function", "function": {"name": "now"}}]


def check(**fields: Any) -> AnswerCheck:
    task = TaskRequest.model_validate({"id": "t", "messages": [{"role": "user", "content": "x"}], **fields})
    found = AnswerCheck.of(GenerationRequest.for_task(task))
    assert found is not None
    return found


def failure(answer_check: AnswerCheck, text: str, finish_reason: str = "stop") -> BackendError:
    with pytest.raises(BackendError) as raised:
        answer_check.check(text, finish_reason)
    return raised.value


def test_free_text_has_no_check() -> None:
    task = TaskRequest.model_validate({"id": "t", "prompt": "x", "tools": TOOLS, "tool_choice": "none"})
    assert AnswerCheck.of(GenerationRequest.for_task(task)) is None


@pytest.mark.parametrize(("arguments", "keyword", "path"), [
    ({"hour": 25}, "maximum", "$.hour"),
    ({"hour": -1}, "minimum", "$.hour"),
    ({"hour": 7, "label": "much too long"}, "maxLength", "$.label"),
    ({"hour": 7, "ratio": 0.5}, "exclusiveMinimum", "$.ratio"),
    ({"hour": 7, "day": "2025-02-30"}, "format", "$.day"),
    ({"hour": 7, "note": "x" * 1001}, "maxLength", "$.note"),
    ({"label": "x"}, "required", "$"),
    ({"hour": 7.5}, "type", "$.hour"),
])
def test_a_call_that_breaks_its_schema_fails_naming_keyword_and_path(
    arguments: dict[str, Any], keyword: str, path: str
) -> None:
    error = failure(check(tools=TOOLS, tool_choice="required"), render_call("set_alarm", json.dumps(arguments)))
    assert error.code == "invalid_tool_call"
    assert f"{keyword} at {path}" in error.message and "set_alarm" in error.message


def test_every_call_is_checked_and_names_must_be_offered() -> None:
    answer_check = check(tools=TOOLS, tool_choice="auto")
    good = render_call("set_alarm", '{"hour": 23, "label": "wake"}') + render_call("now", "{}")
    answer_check.check("Sure. " + good, "stop")
    error = failure(answer_check, good + "\n" + render_call("set_alarm", '{"hour": 24}'))
    assert error.code == "invalid_tool_call" and "call 2" in error.message
    error = failure(answer_check, render_call("reboot", "{}"))
    assert error.code == "invalid_tool_call" and "'reboot'" in error.message
    named = check(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "now"}})
    assert failure(named, render_call("set_alarm", '{"hour": 1}')).code == "invalid_tool_call"


def test_structured_output_is_checked_against_its_schema() -> None:
    answer_check = check(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": ALARM}})
    answer_check.check('{"hour": 0}', "stop")
    error = failure(answer_check, '{"hour": 99}')
    assert error.code == "invalid_structured_output" and "maximum at $.hour" in error.message
    assert failure(answer_check, '{"hour": 1').code == "invalid_structured_output"  # ended at stop: must be whole
    answer_check.check('{"hour": 1', "length")  # cut short: its finish_reason says so
    assert failure(answer_check, '{"hour": 99}', "length").code == "invalid_structured_output"
    as_object = check(response_format={"type": "json_object"})
    as_object.check('{"any": [1]}', "stop")
    assert failure(as_object, "[1]").code == "invalid_structured_output"


def test_with_tools_and_auto_the_answer_is_calls_or_the_json() -> None:
    answer_check = check(tools=TOOLS, tool_choice="auto",
                         response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": ALARM}})
    answer_check.check(render_call("now", "{}"), "stop")
    answer_check.check('{"hour": 3}', "stop")
    assert failure(answer_check, "free text").code == "invalid_structured_output"


def test_a_schema_that_is_no_json_schema_fails_before_generation() -> None:
    task = TaskRequest.model_validate({"id": "t", "prompt": "x", "response_format": {
        "type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "minimum": "low"}}}})
    with pytest.raises(BackendError) as raised:
        AnswerCheck.of(GenerationRequest.for_task(task))
    assert raised.value.code == "bad_params"


def test_a_remote_ref_is_never_fetched_and_fails_closed() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/schema.json"}}}
    answer_check = check(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    error = failure(answer_check, '{"a": 1}')
    assert error.code == "invalid_structured_output" and "could not be checked" in error.message


@given(hour=st.integers(-1000, 1000), label=st.text(max_size=12))
def test_the_check_agrees_with_jsonschema(hour: int, label: str) -> None:
    answer_check = check(tools=TOOLS, tool_choice="required")
    arguments = {"hour": hour, "label": label}
    valid = jsonschema.Draft202012Validator(ALARM).is_valid(arguments)
    text = render_call("set_alarm", json.dumps(arguments))
    if valid:
        answer_check.check(text, "stop")
    else:
        assert failure(answer_check, text).code == "invalid_tool_call"
