"""The bundled model under grammars with integer bounds and string lengths: every call is valid.

The prompt asks for values out of the schema's ranges (hour 25, minute 75, a long label), at a
high temperature over several seeds: the grammar, not the model's manners, keeps the arguments
in range. The check after generation would fail such a task (`invalid_tool_call`,
tests/worker/test_answer_check.py); here it never has to.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from kanbanmesh.board.tool_calls import split_output
from tests.worker.llama_direct import started_backend
from tests.worker.test_llama_tools import SLOTS, request, run_all, sampled
from worker.backends.llama import LlamaBackend

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ALARM = {
    "type": "object",
    "properties": {
        "hour": {"type": "integer", "minimum": 0, "maximum": 23},
        "minute": {"type": "integer", "minimum": 0, "exclusiveMaximum": 60},
        "offset": {"type": "integer", "minimum": -12, "maximum": 14},
        "snooze": {"type": "integer", "exclusiveMinimum": 4, "maximum": 30},
        "label": {"type": "string", "minLength": 2, "maxLength": 10},
    },
    "required": ["hour", "minute", "offset", "snooze", "label"],
}
TOOLS = [{"type": "function", "function": {"name": "set_alarm", "description": "Set an alarm", "parameters": ALARM}}]
ASK = [{"role": "user", "content": "Set an alarm at hour 25, minute 75, UTC offset -20, snooze 99 minutes, "
                                   "labelled 'wake up everyone in the whole house now'."}]
SEEDS = range(5)


@pytest.fixture(scope="module")
def backend() -> Any:
    with started_backend(n_ctx=1024, threads=1, slots=SLOTS) as loaded:
        yield loaded


@pytest.mark.timeout(600)  # 8 generations of up to 200 tokens, batched, on a busy CPU
async def test_bounded_arguments_stay_in_range_over_seeds(backend: LlamaBackend) -> None:
    requests = [request(ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, params=sampled(seed))
                for seed in SEEDS]
    for seed, (text, finished) in zip(SEEDS, await run_all(backend, requests), strict=True):
        assert finished.finish_reason == "stop", (seed, text)
        content, [call] = split_output(text)
        assert content.strip() == "" and call.name == "set_alarm", (seed, text)
        jsonschema.validate(json.loads(call.arguments), ALARM, cls=jsonschema.Draft202012Validator)


@pytest.mark.timeout(600)
async def test_bounded_structured_output_stays_in_range_over_seeds(backend: LlamaBackend) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "alarm", "schema": ALARM}}
    requests = [request(ASK, response_format=fmt, params=sampled(seed)) for seed in SEEDS]
    for seed, (text, finished) in zip(SEEDS, await run_all(backend, requests), strict=True):
        assert finished.finish_reason == "stop", (seed, text)
        jsonschema.validate(json.loads(text), ALARM, cls=jsonschema.Draft202012Validator)
