"""The gate's check of the tool-calling, structured-output and logprobs fields of a new task.

Arbitrary values are refused with 4422 and a reason, never an exception of another kind;
well-formed ones (OpenAI's shapes within the bounds of `kanbanmesh/board/tool_schema.py`) pass.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from kanbanmesh.board import constants as c
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.board.tool_schema import MAX_SCHEMA_DEPTH, MAX_TOOLS
from kanbanmesh.server.validation import UpdateRefused, UpdateValidator, check_new_task

LIMITS = EntryLimits()
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_NAMES = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
_SCHEMA_LEAVES = st.sampled_from([
    {"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "number"}, {"type": "boolean"},
    {"enum": ["a", "b", "c"]}, {"type": "array", "items": {"type": "string"}},
])
_SCHEMAS = st.recursive(
    _SCHEMA_LEAVES,
    lambda inner: st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), inner, min_size=1, max_size=4)
    .flatmap(lambda props: st.just({"type": "object", "properties": props,
                                     "required": sorted(props)[: len(props) // 2 + 1]})),
    max_leaves=8,
)


def _task(**fields: Any) -> dict[str, Any]:
    return {c.F_ID: "t1", c.F_MESSAGES: [{"role": "user", "content": "hi"}], **fields}


def _tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": "does " + name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


@st.composite
def _valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(_NAMES, min_size=1, max_size=5, unique=True))
    tools = [_tool(n, draw(_SCHEMAS.map(lambda s: s if s.get("type") == "object" else _object({"v": s}))))
             for n in names]
    choice = draw(st.sampled_from(["auto", "none", "required", None, "named"]))
    fields: dict[str, Any] = {c.F_TOOLS: tools}
    if choice == "named":
        fields[c.F_TOOL_CHOICE] = {"type": "function", "function": {"name": draw(st.sampled_from(names))}}
    elif choice is not None:
        fields[c.F_TOOL_CHOICE] = choice
    fields[c.F_RESPONSE_FORMAT] = draw(st.sampled_from([
        {"type": "text"}, {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": _object({"a": {"type": "string"}})}},
    ]))
    top = draw(st.integers(0, 20))
    fields[c.F_PARAMS] = {"logprobs": True, "top_logprobs": top}
    fields[c.F_MESSAGES] = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": names[0], "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": names[0]},
    ]
    return _task(**fields)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_valid_requests())
def test_well_formed_tool_requests_pass_the_gate(fields: dict[str, Any]) -> None:
    check_new_task(fields, LIMITS)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([c.F_TOOLS, c.F_TOOL_CHOICE, c.F_RESPONSE_FORMAT, c.F_PARALLEL_TOOL_CALLS, c.F_PARAMS,
                     c.F_MESSAGES]),
    _JSON,
)
def test_arbitrary_values_are_refused_cleanly_or_pass(field: str, value: Any) -> None:
    fields = _task(**{field: value})
    if field == c.F_TOOL_CHOICE:
        fields[c.F_TOOLS] = [_tool("f")]
    try:
        check_new_task(fields, LIMITS)
    except UpdateRefused as refused:
        assert refused.code == c.CLOSE_INVALID_TASK
        assert refused.reason.startswith("invalid task")


@pytest.mark.parametrize(("fields", "why"), [
    (_task(tools=[_tool("bad name")]), "tools.0.function.name"),
    (_task(tools=[_tool("f"), _tool("f")]), "same name"),
    (_task(tools=[_tool(f"f{i}") for i in range(MAX_TOOLS + 1)]), "tools"),
    (_task(tools=[_tool("f", {"type": "string"})]), "type object"),
    (_task(tools=[_tool("f", {"type": "object", "properties": {"x": {"type": "string"}},
                              "description": "x" * (33 << 10)})]), "over the limit"),
    (_task(tool_choice="required"), "tool_choice needs tools"),
    (_task(tools=[_tool("f")], tool_choice={"type": "function", "function": {"name": "g"}}), "not among tools"),
    (_task(tools=[_tool("f")], tool_choice="sometimes"), "tool_choice"),
    (_task(response_format={"type": "xml"}), "response_format"),
    (_task(response_format={"type": "json_schema"}), "json_schema"),
    (_task(params={"top_logprobs": 3}), "needs logprobs"),
    (_task(params={"logprobs": True, "top_logprobs": 21}), "top_logprobs"),
    (_task(messages=[{"role": "user", "content": None}]), "content may be null"),
    (_task(messages=[{"role": "assistant", "content": None}]), "content may be null"),
])
def test_bad_tool_fields_are_refused_with_a_reason(fields: dict[str, Any], why: str) -> None:
    with pytest.raises(UpdateRefused, match=why) as refused:
        check_new_task(fields, LIMITS)
    assert refused.value.code == c.CLOSE_INVALID_TASK


def test_a_schema_nested_past_the_bound_is_refused() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH):
        schema = _object({"x": schema})
    with pytest.raises(UpdateRefused, match="nested deeper"):
        check_new_task(_task(tools=[_tool("f", schema)]), LIMITS)


def test_a_task_with_tools_written_over_the_websocket_is_checked_by_the_twin() -> None:
    """The same check on the path a websocket update takes (the board's twin)."""
    board: Doc[Any] = Doc()
    validator = UpdateValidator(board, LIMITS)
    try:
        writer: Doc[Any] = Doc()
        todo = writer.get(c.TODO, type=Map)
        todo["ok"] = Map(_task(id="ok", tools=[_tool("f", _object({"x": {"type": "integer"}}))],
                               tool_choice="required"))
        validator.check(writer.get_update())
        todo["bad"] = Map(_task(id="bad", tools=[_tool("f")], tool_choice={"type": "function",
                                                                            "function": {"name": "nope"}}))
        with pytest.raises(UpdateRefused, match="not among tools"):
            validator.check(writer.get_update(board.get_state()))
    finally:
        validator.close()
