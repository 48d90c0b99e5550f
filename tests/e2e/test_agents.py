"""The agent examples (examples/agents/), run unchanged as scripts against a real server: a
LangChain agent (`bind_tools`, a tool message back, `with_structured_output`) and an AutoGen
`AssistantAgent` with one Python tool.

What is checked is the protocol, not the model's wisdom: a call of the right tool whose
arguments are valid against its schema, the tool's result fed back to the model as a `tool`
turn answering that call, a final answer; and structured output valid against its schema.
First against the scripted backend (tests/e2e/tool_workers.py: the frameworks' side of the
protocol), then against the bundled SmolLM2 on the llama backend, whose calls and JSON answers
its grammar constrains (slow).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest

from client_sdk import AsyncClient
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.e2e.backend_workers import running_worker
from tests.e2e.tool_workers import ScriptedToolBackend
from worker.backends.models import BUNDLED_NAME

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "agents"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CITY_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
               "required": ["name", "country"]}


async def run_example(script: str, base_url: str, model: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with anyio.fail_after(600):
        done = await anyio.run_process(
            [sys.executable, str(EXAMPLES / script), "--base-url", base_url, "--model", model, "--json", *args],
            env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    return dict(json.loads(done.stdout.decode().strip().splitlines()[-1]))


async def tool_turns(url: str) -> list[dict[str, Any]]:
    """The `tool` turns of the tasks on the board: what the frameworks fed back."""
    async with AsyncClient(url) as watcher:
        with anyio.fail_after(10):
            while not watcher.snapshot().done:
                await watcher.wait_changed(0.5)
        turns = []
        for entry in watcher.snapshot().done:
            for message in entry.messages or []:
                if message.role == "tool":
                    turns.append({"task": entry.id, **message.model_dump()})
    return turns


async def check_agents(url: str, model: str, question: str) -> None:
    base_url = "http" + url[2:] + "/v1"
    langchain = await run_example("langchain_agent.py", base_url, model, "--question", question)
    autogen = await run_example("autogen_agent.py", base_url, model, "--question", question)

    [lc_call] = langchain["calls"]
    assert lc_call["name"] == "get_weather"
    jsonschema.validate(lc_call["args"], WEATHER_SCHEMA)
    assert lc_call["id"].startswith("call_")
    assert isinstance(langchain["answer"], str) and langchain["answer"].strip()
    jsonschema.validate(langchain["structured"], CITY_SCHEMA)

    assert autogen["calls"], "AutoGen's agent called its tool"
    for call in autogen["calls"]:
        assert call["name"] == "get_weather"
        jsonschema.validate(json.loads(call["arguments"]), WEATHER_SCHEMA)
    assert [r["id"] for r in autogen["results"]] == [c["id"] for c in autogen["calls"]]
    assert not any(r["is_error"] for r in autogen["results"])
    assert isinstance(autogen["answer"], str) and autogen["answer"].strip()

    # Each tool result went back to the model as a tool turn answering its call, in a task of
    # its own (the call's id names the task that made it).
    fed_back = {t["tool_call_id"]: t["content"] for t in await tool_turns(url)}
    assert fed_back[lc_call["id"]] == lc_call["result"]
    for call, result in zip(autogen["calls"], autogen["results"], strict=True):
        assert fed_back[call["id"]] == result["result"]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[str]:
    settings = Settings(port=0, data_dir=tmp_path, queue_timeout_s=60.0)
    async with anyio.create_task_group() as tg:
        yield await tg.start(serve, settings)
        tg.cancel_scope.cancel()


async def test_the_agents_speak_the_protocol_with_the_scripted_backend(server: str) -> None:
    async with running_worker(server, ScriptedToolBackend(), slots=2):
        await check_agents(server, "scripted", '{"city": "Paris"}')


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_the_agents_on_the_bundled_model(server: str) -> None:
    """SmolLM2 135M (the bundled model `kanbanmesh up` serves) on the llama backend."""
    from tests.worker.llama_direct import loaded_backend

    backend: AbstractAsyncContextManager[Any] = loaded_backend(n_ctx=2048, threads=1, slots=1)
    async with backend as llama, running_worker(server, llama):
        await check_agents(server, BUNDLED_NAME, "What is the weather in Paris?")
