"""examples/mapreduce: a long document summarized as a task graph, against a real server."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from llama_cpp import Llama

from client_sdk import AsyncClient, TaskStatus
from kanbanmesh.board.templates import substitute
from tests.conftest import WorkerPool
from tests.e2e.backend_workers import Shared, running_worker
from tests.worker.llama_direct import direct_chat, llama_fixtures
from worker.backends.llama import LlamaBackend
from worker.backends.llama_generate import Decoding
from worker.backends.models import BUNDLED_NAME

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mapreduce"
ROOT = EXAMPLE.parents[1]


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mapreduce_example", EXAMPLE / "mapreduce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_document_is_split_between_paragraphs_into_the_parts_asked() -> None:
    mapreduce = example()
    text = (EXAMPLE / "second_inaugural.txt").read_text(encoding="utf-8")
    paragraphs = len([p for p in text.split("\n\n") if p.strip()])
    for parts in (1, 2, 4, 7, 100):
        pieces = mapreduce.split(text, parts)
        assert len(pieces) == min(parts, paragraphs) and all(pieces)
        assert "\n\n".join(pieces).split() == text.split()  # nothing lost, nothing added
    sizes = [len(p) for p in mapreduce.split(text, 2)]
    assert max(sizes) < 2 * min(sizes)


async def test_the_example_runs_a_graph_against_a_server(server_url: str, workers: WorkerPool) -> None:
    await workers.start(slots=2, delay_ms=1)
    command = [sys.executable, str(EXAMPLE / "mapreduce.py"), "--url", server_url, "--parts", "3", "--timeout", "60",
               "--max-tokens", "1000"]
    with anyio.fail_after(90):
        done = await anyio.run_process(command, cwd=ROOT, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    lines = out.splitlines()
    assert sum(line.startswith("submitted ") for line in lines) == 4
    assert sum(": succeeded: echo: Summarize this passage" in line for line in lines) == 3
    summary = out.split("summary of second_inaugural.txt:\n", 1)[1]
    # The echo worker answers with its prompt: the combining prompt, each reference replaced.
    assert summary.startswith("echo: These are summaries of consecutive parts of one speech:\n- echo: Summarize")
    assert "{{result:" not in summary and summary.count("- echo: Summarize this passage") == 3


backend, direct = llama_fixtures(n_ctx=2048, threads=1)
GREEDY = {"temperature": 0.0, "seed": 11, "cache_prompt": False}


@pytest.mark.slow
async def test_a_two_part_summary_on_the_bundled_model(server_url: str, backend: LlamaBackend, direct: Llama) -> None:
    """The model summarizes two parts, then their combination: the combining task's answer is
    what llama-cpp-python answers to the prompt with both parts' summaries put in."""
    mapreduce = example()
    text = (EXAMPLE / "second_inaugural.txt").read_text(encoding="utf-8")
    pieces = mapreduce.split(text[:1800], 2)
    params = {"max_tokens": 32, **GREEDY}
    async with running_worker(server_url, Shared(backend), slots=2), AsyncClient(server_url) as client:
        await client.wait_for_workers(1, timeout_s=30)
        parts = [await client.submit(mapreduce.map_prompt(p), model=BUNDLED_NAME, params=params) for p in pieces]
        prompt = mapreduce.reduce_prompt([p.id for p in parts])
        combine = await client.submit(prompt, model=BUNDLED_NAME, params=params, after=parts)
        with anyio.fail_after(300):
            summaries = [(await p.result()).result or "" for p in parts]
            entry = await combine.result()
    assert entry.status is TaskStatus.SUCCEEDED and all(summaries)
    assert entry.after_results == {p.id: s for p, s in zip(parts, summaries, strict=True)}
    resolved = substitute(prompt, entry.after_results)
    assert all(s in resolved for s in summaries) and "{{result:" not in resolved
    expected = direct_chat(direct, [{"role": "user", "content": resolved}], max_tokens=32,
                           repeat_penalty=Decoding().repeat_penalty, **GREEDY)
    assert entry.result == expected
    assert entry.usage is not None and entry.usage.prompt_tokens > sum(len(s.split()) for s in summaries)
