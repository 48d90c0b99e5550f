"""The llama backend through the whole mesh, on the bundled model: what a client receives
equals what llama-cpp-python answers when called directly with the same model and params."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
from llama_cpp import Llama

from client_sdk import AsyncClient, TaskCancelledError, TaskFailedError, TaskStatus
from tests.conftest import cli, free_port
from tests.e2e.backend_workers import Shared, running_worker
from tests.worker.llama_direct import direct_chat, llama_fixtures
from tests.worker.model_files import template_free_model
from worker.backends.llama import LlamaBackend
from worker.backends.llama_generate import Decoding
from worker.backends.models import BUNDLED_NAME

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

N_CTX = 1024
THREADS = 1  # the same for the worker and the baseline; leaves a core to the server on 2 cores
# Reproducible (docs: README "Requests"): greedy, and the prompt read whole, not from the cache.
GREEDY = {"temperature": 0.0, "seed": 11, "cache_prompt": False}
HAIKU = "Write a haiku about the sea"


backend, direct = llama_fixtures(n_ctx=N_CTX, threads=THREADS)


def baseline(direct: Llama, prompt: str, **params: Any) -> str:
    """llama-cpp-python's own answer; the backend's documented default repeat_penalty included."""
    params.setdefault("repeat_penalty", Decoding().repeat_penalty)
    return direct_chat(direct, [{"role": "user", "content": prompt}], **params)


async def test_the_streamed_and_final_text_equal_llama_cpp_python_direct(
    server_url: str, backend: LlamaBackend, direct: Llama
) -> None:
    async with running_worker(server_url, Shared(backend)), AsyncClient(server_url) as client:
        [seen] = await client.wait_for_workers(1, timeout_s=10)
        assert BUNDLED_NAME in seen.models and seen.engine == "llama.cpp"
        task = await client.submit(HAIKU, model=BUNDLED_NAME, params={"max_tokens": 48, **GREEDY})
        with anyio.fail_after(60):
            chunks = [chunk async for chunk in task.stream()]
            entry = await task.result()
    expected = baseline(direct, HAIKU, max_tokens=48, **GREEDY)
    assert len(chunks) > 1, "the answer must stream in pieces"
    assert "".join(chunks) == entry.result == expected
    assert entry.usage is not None and entry.usage.completion_tokens > 5 and entry.usage.prompt_tokens > 10
    assert entry.timings is not None and entry.timings.ttft_ms > 0 and entry.timings.tokens_per_s > 0


async def test_cancel_max_tokens_stop_and_context_overflow(
    server_url: str, backend: LlamaBackend, direct: Llama
) -> None:
    count = "Count from 1 to 20, separated by commas."
    async with running_worker(server_url, Shared(backend)), AsyncClient(server_url) as client:
        await client.wait_for_workers(1, timeout_s=10)
        with anyio.fail_after(90):
            story = await client.submit("Write a long story about the sea.", params={"max_tokens": 500, **GREEDY})
            async for _ in story.stream():
                break  # generating: cancel now
            cancelled = await story.cancel()
            with pytest.raises(TaskCancelledError):
                await story.result()

            short = await (await client.submit(count, params={"max_tokens": 5, **GREEDY})).result()
            stopped = await (await client.submit(count, params={"max_tokens": 60, "stop": ["5"], **GREEDY})).result()

            overflow = await client.submit("sea " * 2 * N_CTX, params={"max_tokens": 8})
            with pytest.raises(TaskFailedError) as failed:
                await overflow.result()
            after = await (await client.submit("Say hello.", params={"max_tokens": 8, **GREEDY})).result()
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.usage is not None
    assert cancelled.usage.completion_tokens < 100, "stopped long before max_tokens"
    assert short.usage is not None and short.usage.completion_tokens == 5
    assert stopped.result == baseline(direct, count, max_tokens=60, stop=["5"], **GREEDY)
    assert "5" not in (stopped.result or "") and "4" in (stopped.result or "")
    assert failed.value.code == "context_overflow"
    assert f"context holds {N_CTX}" in failed.value.message and "--n-ctx" in failed.value.message
    assert after.status is TaskStatus.SUCCEEDED and after.result


async def test_two_slots_stream_two_tasks_at_once(server_url: str, backend: LlamaBackend, direct: Llama) -> None:
    prompts = [HAIKU, "Name three fruits and their colours."]
    firsts: dict[int, float] = {}
    ends: dict[int, float] = {}
    texts: dict[int, str] = {}
    async with running_worker(server_url, Shared(backend), slots=2), AsyncClient(server_url) as client:
        await client.wait_for_workers(1, timeout_s=10)
        tasks = [await client.submit(p, params={"max_tokens": 40, **GREEDY}) for p in prompts]

        async def follow(i: int) -> None:
            chunks = []
            async for chunk in tasks[i].stream():
                firsts.setdefault(i, time.monotonic())
                chunks.append(chunk)
            ends[i] = time.monotonic()
            texts[i] = "".join(chunks)

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for i in range(2):
                    tg.start_soon(follow, i)
            entries = [await t.result() for t in tasks]
    assert firsts[1] < ends[0] and firsts[0] < ends[1], "both streamed at the same time"
    assert {e.worker for e in entries} == {entries[0].worker}
    for i, prompt in enumerate(prompts):
        assert texts[i] == entries[i].result == baseline(direct, prompt, max_tokens=40, **GREEDY)


async def test_a_worker_killed_mid_answer_is_replaced_and_the_text_is_the_same(
    server_url: str, backend: LlamaBackend, direct: Llama
) -> None:
    command = cli("worker", "--url", server_url, "--backend", "llama", "--n-ctx", str(N_CTX),
                  "--threads", str(THREADS), "--name", "victim")
    victim_process = anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    async with await victim_process as victim, AsyncClient(server_url) as client:
        with anyio.fail_after(90):
            await client.wait_for_workers(1, timeout_s=60)
            task = await client.submit(HAIKU, params={"max_tokens": 64, **GREEDY})
            chunks: list[str] = []
            stream = task.stream()
            async for chunk in stream:
                chunks.append(chunk)
                victim.kill()  # SIGKILL after the first piece, mid-answer
                await victim.wait()
                break
            async with running_worker(server_url, Shared(backend), name="rescuer") as rescuer:
                async for chunk in stream:
                    chunks.append(chunk)
                entry = await task.result()
    assert entry.attempt == 2 and entry.worker == rescuer.id
    assert "".join(chunks) == entry.result == baseline(direct, HAIKU, max_tokens=64, **GREEDY)


async def test_a_model_without_chat_template_or_a_missing_file_stops_the_worker(tmp_path: Path) -> None:
    gemma = template_free_model(tmp_path)
    with anyio.fail_after(60):
        refused = await anyio.run_process(cli("worker", "--model", str(gemma), "--url", "ws://127.0.0.1:9"), check=False)
        missing = await anyio.run_process(cli("worker", "--model", str(tmp_path / "nope.gguf")), check=False)
        up = await anyio.run_process(cli("up", "--port", "0", "--no-persist", "--model", str(gemma)), check=False)
    assert refused.returncode == 1
    assert b"gemma-3-270m-q4_k_m.gguf has no chat template" in refused.stderr and b"--chat-format" in refused.stderr
    assert missing.returncode == 1 and b"nope.gguf' does not exist" in missing.stderr
    assert up.returncode == 1 and b"has no chat template" in up.stderr, "up refuses before starting anything"


async def wait_healthy(port: int) -> None:
    async with httpx.AsyncClient() as http:
        with anyio.fail_after(30):
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.1)


@asynccontextmanager
async def running_up(data_dir: Path) -> AsyncIterator[int]:
    """`kanbanmesh up` on the bundled model, as a user starts it; yields its port once a
    worker is ready, and stops it (SIGTERM) at the end."""
    port = free_port()
    up_command = cli("up", "--port", str(port), "--data-dir", str(data_dir), "--n-ctx", str(N_CTX), "--threads", str(THREADS))
    async with await anyio.open_process(up_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as up:
        try:
            await wait_healthy(port)
            async with AsyncClient(f"ws://127.0.0.1:{port}") as client:
                await client.wait_for_workers(1, timeout_s=60)
            yield port
        finally:
            up.terminate()
            with anyio.fail_after(20):
                await up.wait()


async def test_cli_submit_against_up_streams_a_real_answer(tmp_path: Path, direct: Llama) -> None:
    async with running_up(tmp_path) as port:
        url = f"ws://127.0.0.1:{port}"
        submit = cli("submit", "--url", url, "--max-tokens", "48", "--temperature", "0", "--seed", "11", HAIKU)
        reads: list[bytes] = []
        with anyio.fail_after(60):
            async with await anyio.open_process(submit, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as process:
                assert process.stdout is not None
                async for data in process.stdout:
                    reads.append(data)
                code = await process.wait()
    assert code == 0
    printed = b"".join(reads).decode()
    assert printed.rstrip("\n") == baseline(direct, HAIKU, max_tokens=48, **GREEDY)
    assert len(reads) > 1, "the answer is printed as it streams, not at the end"


async def test_the_openai_package_against_up_streams_what_it_answers_whole(tmp_path: Path, direct: Llama) -> None:
    """The official `openai` client, unmodified, on the bundled model: at temperature 0 the
    streamed text equals the whole answer (and llama-cpp-python's own), usage included."""
    messages: Any = [{"role": "user", "content": HAIKU}]
    sampling = {k: v for k, v in GREEDY.items() if k != "cache_prompt"}
    params: Any = {"model": BUNDLED_NAME, "messages": messages, "max_tokens": 40, **sampling,
                   "extra_body": {"cache_prompt": False}}  # llama-server's key, as its clients pass it
    async with (
        running_up(tmp_path) as port,
        openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0) as oai,
    ):
        with anyio.fail_after(90):
            models = [m.id for m in (await oai.models.list()).data]
            whole = await oai.chat.completions.create(**params)
            pieces, usage = [], None
            stream = await oai.chat.completions.create(
                **params, stream=True, stream_options={"include_usage": True})
            async for chunk in stream:
                usage = chunk.usage or usage
                pieces += [ch.delta.content for ch in chunk.choices if ch.delta.content]
            legacy = await oai.completions.create(model=BUNDLED_NAME, prompt="The sea is", max_tokens=8,
                                                  temperature=0.0, seed=11)
    assert BUNDLED_NAME in models
    text = whole.choices[0].message.content
    assert text and "".join(pieces) == text == baseline(direct, HAIKU, max_tokens=40, **GREEDY)
    assert len(pieces) > 1, "it streamed in pieces"
    assert whole.choices[0].finish_reason in {"stop", "length"}
    assert whole.usage is not None and whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens)
    assert legacy.choices[0].text and legacy.usage is not None and legacy.usage.completion_tokens <= 8
