"""The streamed chat choice of the OpenAI endpoint: whatever pieces a task's text arrives in,
the deltas add up to the answer the worker writes (its calls, its text outside them)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanbanmesh.board.tool_calls import MalformedToolCall, call_id, render_call, split_output
from kanbanmesh.server.openai_choices import ChoiceDeltas

TASK = "api-0123"
texts = st.text(alphabet=st.sampled_from(list("ab <>{}\"\n\\é")), max_size=12)
arguments = st.dictionaries(st.sampled_from(["city", "n", "x"]), st.text(max_size=6) | st.integers(), max_size=3)


def added_up(deltas: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    """What the `openai` package's accumulator makes of the deltas."""
    content, calls = "", []
    for delta in deltas:
        content += delta.get("content", "")
        for call in delta.get("tool_calls", []):
            if "id" in call:
                assert call["index"] == len(calls) and call["function"]["arguments"] == ""
                calls.append({"id": call["id"], "name": call["function"]["name"], "arguments": ""})
            else:
                calls[call["index"]]["arguments"] += call["function"]["arguments"]
    return content, calls


def streamed(text: str, cuts: list[int]) -> list[dict[str, Any]]:
    choice = ChoiceDeltas(TASK, tools=True)
    deltas, last = [], 0
    for cut in sorted({c % (len(text) + 1) for c in cuts}) + [len(text)]:
        deltas += choice.feed(text[last:cut])
        last = cut
    return deltas + choice.finish()


@given(parts=st.lists(texts | st.tuples(st.sampled_from(["f", "get_weather"]), arguments), max_size=5),
       cuts=st.lists(st.integers(0, 400), max_size=30))
def test_any_pieces_add_up_to_the_workers_answer(parts: list[Any], cuts: list[int]) -> None:
    text = "".join(p if isinstance(p, str) else render_call(p[0], json.dumps(p[1])) for p in parts)
    content, calls = added_up(streamed(text, cuts))
    expected_content, expected_calls = split_output(text)
    assert [(c["name"], c["arguments"]) for c in calls] == [(c.name, c.arguments) for c in expected_calls]
    assert [c["id"] for c in calls] == [call_id(TASK, i) for i in range(len(calls))]
    # The worker's `result`: stripped when there are calls (leading whitespace streams, as
    # whether calls follow is not known then).
    assert content == (expected_content.rstrip() if expected_calls else expected_content)


@pytest.mark.parametrize(("text", "content"), [
    ('a <tool_call>{"name": "f", "arguments": {}}</tool_call> b\n', "a  b"),
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call>\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\n', ""),
    ("no calls \n", "no calls \n"),
])
def test_content_beside_calls_is_the_workers_result(text: str, content: str) -> None:
    for cuts in ([], list(range(len(text)))):
        assert added_up(streamed(text, cuts))[0] == content


def test_without_tools_the_text_is_content_as_it_comes() -> None:
    choice = ChoiceDeltas(TASK, tools=False)
    assert choice.feed("<tool_call>{") == [{"content": "<tool_call>{"}] and choice.finish() == []


def test_a_call_cut_short_stays_as_streamed_only_at_length() -> None:
    choice = ChoiceDeltas(TASK, tools=True)
    choice.feed('<tool_call>{"name": "f", "arguments": {"a": ')
    assert choice.finish(truncated=True) == []
    broken = ChoiceDeltas(TASK, tools=True)
    broken.feed('<tool_call>{"name": "f", "arguments": {"a": ')
    with pytest.raises(MalformedToolCall):
        broken.finish()
