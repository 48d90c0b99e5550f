"""The text form of tool calls: what the worker writes, what a streaming reader splits."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kanbanmesh.board.tool_calls import (
    CLOSE,
    OPEN,
    Arguments,
    CallEnd,
    CallStart,
    Content,
    MalformedToolCall,
    ParsedCall,
    ToolCallEvent,
    ToolCallStream,
    call_id,
    render_call,
    split_output,
)

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_arguments = st.dictionaries(st.text(), _json_values, max_size=5).map(
    lambda d: json.dumps(d, ensure_ascii=False)
)
# Content that never contains a marker (a model's text may contain one; then it is a call).
_content = st.text().filter(lambda t: OPEN not in t)
_calls = st.lists(st.tuples(st.text(min_size=1, max_size=30), _arguments), max_size=3)


def _pieces(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def _replay(events: list[ToolCallEvent]) -> tuple[str, list[ParsedCall]]:
    content, calls, names, args = "", [], {}, {}
    for event in events:
        if isinstance(event, Content):
            content += event.text
        elif isinstance(event, CallStart):
            names[event.index], args[event.index] = event.name, ""
        elif isinstance(event, Arguments):
            args[event.index] += event.text
        else:
            calls.append(ParsedCall(names[event.index], args[event.index]))
    return content, calls


@settings(max_examples=300, deadline=None)
@given(before=_content, calls=_calls, after=_content, cuts=st.lists(st.integers(0, 10_000)))
def test_any_split_of_the_text_gives_the_same_content_and_calls(
    before: str, calls: list[tuple[str, str]], after: str, cuts: list[int]
) -> None:
    text = before + "".join(render_call(n, a) for n, a in calls) + (after if calls else "")
    stream = ToolCallStream()
    events: list[ToolCallEvent] = []
    for piece in _pieces(text, cuts):
        events += stream.feed(piece)
    events += stream.finish()
    expected_content = before + (after if calls else "")
    expected_calls = [ParsedCall(n, a) for n, a in calls]
    assert _replay(events) == (expected_content, expected_calls)
    assert split_output(text) == (expected_content, expected_calls)
    for parsed in expected_calls:
        json.loads(parsed.arguments)


@settings(max_examples=200, deadline=None)
@given(text=_content, cuts=st.lists(st.integers(0, 10_000)))
def test_text_without_calls_streams_out_whole(text: str, cuts: list[int]) -> None:
    stream = ToolCallStream()
    out = "".join(
        e.text for piece in _pieces(text, cuts) for e in stream.feed(piece) if isinstance(e, Content)
    )
    out += "".join(e.text for e in stream.finish() if isinstance(e, Content))
    assert out == text


def test_a_call_starts_before_its_arguments_end() -> None:
    stream = ToolCallStream()
    assert stream.feed('Sure. <tool_call>{"name": "get_weather", "arguments": {"ci') == [
        Content("Sure. "), CallStart(0, "get_weather"), Arguments(0, '{"ci'),
    ]
    assert stream.feed('ty": "Pa}ris"}}') == [Arguments(0, 'ty": "Pa}ris"}')]
    assert stream.feed(CLOSE) == [CallEnd(0)]
    assert stream.finish() == []


def test_a_partial_marker_is_held_back_then_released_as_text() -> None:
    stream = ToolCallStream()
    assert stream.feed("a <tool_") == [Content("a ")]
    assert stream.feed("box>") == [Content("<tool_box>")]
    assert stream.feed("<tool") == []
    assert stream.finish() == [Content("<tool")]


def test_whitespace_between_the_parts_of_a_call_is_allowed() -> None:
    text = f'{OPEN}\n{{ "name" : "f" ,\n "arguments" : {{"x": 1}} }}\n{CLOSE}'
    assert split_output(text) == ("", [ParsedCall("f", '{"x": 1}')])


@pytest.mark.parametrize("text", [
    f"{OPEN}not json{CLOSE}",
    f'{OPEN}{{"name": 3, "arguments": {{}}}}{CLOSE}',
    f'{OPEN}{{"name": "f", "arguments": [1]}}{CLOSE}',
    f'{OPEN}{{"name": "f", "args": {{}}}}{CLOSE}',
    f'{OPEN}{{"name": "f", "arguments": {{}}}}</tool>',
    f'{OPEN}{{"name": "f", "arguments": {{"a": ',
])
def test_malformed_calls_are_refused(text: str) -> None:
    with pytest.raises(MalformedToolCall):
        split_output(text)


def test_call_ids_are_stable_per_task_and_index() -> None:
    assert call_id("t1", 0) == call_id("t1", 0)
    assert len({call_id("t1", 0), call_id("t1", 1), call_id("t2", 0)}) == 3
    assert call_id("t1", 0).startswith("call_")
