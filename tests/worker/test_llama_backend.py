"""The llama backend on the bundled model, without the mesh (the e2e tests add the mesh)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from llama_cpp import Llama

from kanbanmesh.board.schema import ChatMessage, TaskParams
from kanbanmesh.errors import BackendError
from tests.worker.llama_direct import direct_chat, direct_llama, llama_fixtures, loaded_backend
from worker.backends.base import Finished, GenerationEvent, GenerationRequest, TextChunk
from worker.backends.llama import LlamaBackend

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

N_CTX = 512
THREADS = 1
# Reproducible (README "Requests"): greedy, and the prompt read whole, not from the cache.
GREEDY = {"temperature": 0.0, "seed": 7, "repeat_penalty": 1.1, "cache_prompt": False}


backend, direct = llama_fixtures(n_ctx=N_CTX, threads=THREADS)


def ask(content: str, **params: Any) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=content)], prompt=None, params=TaskParams(**params)
    )


async def collect(events: AsyncIterator[GenerationEvent]) -> tuple[list[str], Finished]:
    chunks: list[str] = []
    async for event in events:
        if isinstance(event, TextChunk):
            chunks.append(event.text)
        else:
            return chunks, event
    raise AssertionError("no Finished event")


async def test_streamed_text_equals_llama_cpp_python_called_directly(
    backend: LlamaBackend, direct: Llama
) -> None:
    chunks, finished = await collect(backend.generate(ask("Write a haiku about the sea", max_tokens=40, **GREEDY)))
    expected = direct_chat(direct, [{"role": "user", "content": "Write a haiku about the sea"}], max_tokens=40, **GREEDY)
    assert len(chunks) > 3 and "".join(chunks) == expected
    assert finished.usage.completion_tokens > 0 and finished.usage.prompt_tokens > 10


async def test_with_flash_attention_the_text_equals_llama_cpp_pythons_with_it() -> None:
    # `--flash-attn` changes the floats: the answer is then `Llama(flash_attn=True)`'s.
    prompt = "Name three rivers of Europe and say one thing about each."
    messages = [{"role": "user", "content": prompt}]
    with direct_llama(n_ctx=N_CTX, threads=THREADS, flash_attn=True) as flash:
        expected = direct_chat(flash, messages, max_tokens=48, **GREEDY)
    async with loaded_backend(n_ctx=N_CTX, threads=THREADS, slots=2, flash_attn=True) as fast:
        chunks, _ = await collect(fast.generate(ask(prompt, max_tokens=48, **GREEDY)))
    assert "".join(chunks) == expected


async def test_split_utf8_characters_never_stream_as_replacement_characters(
    backend: LlamaBackend, direct: Llama
) -> None:
    prompt = "Write three ocean emojis."  # this model answers with emoji, each several tokens
    chunks, _ = await collect(backend.generate(ask(prompt, max_tokens=24, **GREEDY)))
    text = "".join(chunks)
    assert any(ord(ch) > 0xFFFF for ch in text), f"expected emoji in {text!r}"
    assert not any("\ufffd" in chunk for chunk in chunks)
    assert text == direct_chat(direct, [{"role": "user", "content": prompt}], max_tokens=24, **GREEDY)


async def test_max_tokens_and_stop_are_honoured(backend: LlamaBackend) -> None:
    _, finished = await collect(backend.generate(ask("Count from 1 to 20, comma separated.", max_tokens=5, **GREEDY)))
    assert finished.usage.completion_tokens == 5 and finished.finish_reason == "length"
    full, _ = await collect(backend.generate(ask("Count from 1 to 20, comma separated.", max_tokens=40, **GREEDY)))
    whole = "".join(full)
    assert "5" in whole, whole
    stopped, finished = await collect(
        backend.generate(ask("Count from 1 to 20, comma separated.", max_tokens=40, stop=["5"], **GREEDY))
    )
    assert "".join(stopped) == whole[: whole.index("5")] and finished.finish_reason == "stop"


async def test_a_prompt_over_the_context_fails_clearly_and_the_next_one_runs(backend: LlamaBackend) -> None:
    with pytest.raises(BackendError, match=rf"the prompt is \d+ tokens but this worker's context holds {N_CTX}") as caught:
        await collect(backend.generate(ask("sea " * 2 * N_CTX, max_tokens=8)))
    assert caught.value.code == "context_overflow"
    chunks, _ = await collect(backend.generate(ask("Say hi", max_tokens=4, **GREEDY)))
    assert chunks


async def test_bad_params_and_other_models_are_refused(backend: LlamaBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await collect(backend.generate(ask("x", temprature=0.5)))
    assert caught.value.code == "bad_params"
    other = GenerationRequest(messages=None, prompt="x", params=TaskParams(), model="gpt-4")
    with pytest.raises(BackendError, match="serves smollm2-135m-instruct") as caught:
        await collect(backend.generate(other))
    assert caught.value.code == "model_not_found"


async def test_closing_the_stream_stops_generation_and_frees_the_slot(backend: LlamaBackend) -> None:
    events = backend.generate(ask("Write a long story about the sea.", max_tokens=400, **GREEDY))
    seen = 0
    async for event in events:
        seen += isinstance(event, TextChunk)
        if seen == 3:
            break
    started = time.monotonic()
    await events.aclose()  # what the worker does on cancel
    assert time.monotonic() - started < 0.5, "stop within about one token"
    chunks, _ = await collect(backend.generate(ask("Say hi", max_tokens=4, **GREEDY)))
    assert chunks


async def test_two_generations_run_at_once_without_blocking_the_event_loop(
    backend: LlamaBackend, direct: Llama
) -> None:
    prompts = ["Write a haiku about the sea", "Name three fruits."]
    results: dict[str, str] = {}
    first_chunk: dict[str, float] = {}
    done: dict[str, float] = {}
    lags: list[float] = []

    async def run(prompt: str) -> None:
        chunks: list[str] = []
        async for event in backend.generate(ask(prompt, max_tokens=32, **GREEDY)):
            if isinstance(event, TextChunk):
                first_chunk.setdefault(prompt, time.monotonic())
                chunks.append(event.text)
        done[prompt] = time.monotonic()
        results[prompt] = "".join(chunks)

    async def ticker() -> None:
        while len(done) < 2:
            before = time.monotonic()
            await anyio.sleep(0.005)
            lags.append(time.monotonic() - before - 0.005)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            for prompt in prompts:
                tg.start_soon(run, prompt)
    a, b = prompts
    assert first_chunk[b] < done[a] and first_chunk[a] < done[b], "the two must overlap"
    assert max(lags) < 0.25, f"the event loop stalled for {max(lags):.3f} s"
    for prompt in prompts:
        assert results[prompt] == direct_chat(direct, [{"role": "user", "content": prompt}], max_tokens=32, **GREEDY)


async def test_a_cancel_interrupts_a_long_prompt_evaluation(backend: LlamaBackend) -> None:
    # ~450 prompt tokens: seconds of evaluation in one llama.cpp call on one CPU thread.
    events = backend.generate(ask("The sea is wide and deep. " * 60, max_tokens=8))
    started = time.monotonic()
    with anyio.move_on_after(0.3):
        await events.__anext__()  # cancelled while the prompt is being evaluated
    assert time.monotonic() - started < 0.8, "the abort callback must interrupt the evaluation"
    chunks, _ = await collect(backend.generate(ask("Say hi", max_tokens=4, **GREEDY)))
    assert chunks


def test_fits_says_when_a_conversation_no_longer_leaves_room_for_the_answer(backend: LlamaBackend) -> None:
    turn = ChatMessage(role="user", content="Tell me about the sea.")
    assert backend.fits([turn], TaskParams(max_tokens=64))
    history = [ChatMessage(role="assistant", content="The sea is wide and deep. " * 70)]
    assert not backend.fits(history + [turn], TaskParams(max_tokens=64))  # ~520 + 64 > 512
