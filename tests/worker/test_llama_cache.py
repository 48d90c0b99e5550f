"""Warm inference on the bundled model, without the mesh: prefix reuse, exact cached-token
counts, continuous batching that leaves each answer as it would be alone, cancel, host RAM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from kanbanmesh.board.schema import ChatMessage, TaskParams
from tests.worker.llama_direct import loaded_backend, started_backend
from worker.backends.base import Finished, GenerationEvent, GenerationRequest, TextChunk
from worker.backends.llama import LlamaBackend
from worker.backends.llama_pool import common_prefix

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SYSTEM = ("You are a patient assistant for a harbour master. Answer in one short sentence, "
          "with the facts of the harbour when they matter. " * 4)
GREEDY_COLD = {"temperature": 0.0, "seed": 3, "cache_prompt": False}


def chat(*turns: tuple[str, str], **params: Any) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role=role, content=content) for role, content in turns],
        prompt=None, params=TaskParams(**params),
    )


async def collect(events: AsyncIterator[GenerationEvent]) -> tuple[str, Finished]:
    text = ""
    async for event in events:
        if isinstance(event, TextChunk):
            text += event.text
        else:
            return text, event
    raise AssertionError("no Finished event")


@pytest.fixture(scope="module")
def two_slots() -> Iterator[LlamaBackend]:
    with started_backend(n_ctx=1024, threads=1, slots=2) as backend:
        yield backend


async def test_a_prompt_reads_only_what_no_sequence_holds_and_says_so_exactly(two_slots: LlamaBackend) -> None:
    first = chat(("system", SYSTEM), ("user", "When does the ferry leave?"), max_tokens=8, temperature=0.0)
    second = chat(("system", SYSTEM), ("user", "Is the lighthouse open today?"), max_tokens=8, temperature=0.0)
    _, done = await collect(two_slots.generate(first))
    assert done.usage.cached_tokens == 0 and done.prompt_ms > 0
    _, again = await collect(two_slots.generate(second))
    expected = common_prefix(two_slots.prompt_tokens(first), two_slots.prompt_tokens(second))
    assert expected > 50  # the system prompt and the chat template's head
    assert again.usage.cached_tokens == expected
    assert again.usage.prompt_tokens == len(two_slots.prompt_tokens(second))
    # Off for a task, nothing is reused.
    _, cold = await collect(two_slots.generate(chat(("system", SYSTEM), ("user", "Any storms?"),
                                                    max_tokens=4, **GREEDY_COLD)))
    assert cold.usage.cached_tokens == 0


async def test_a_conversations_next_turn_reuses_the_turn_before_and_its_answer(two_slots: LlamaBackend) -> None:
    question = ("user", "Name a fish of the North Sea.")
    answer, _ = await collect(two_slots.generate(chat(("system", SYSTEM), question, max_tokens=16, temperature=0.0)))
    follow_up = chat(("system", SYSTEM), question, ("assistant", answer), ("user", "And another one?"),
                     max_tokens=8, temperature=0.0)
    _, done = await collect(two_slots.generate(follow_up))
    turn_one = len(two_slots.prompt_tokens(chat(("system", SYSTEM), question)))
    assert done.usage.cached_tokens > turn_one  # the first turn's prompt and part of its answer


async def test_eight_at_once_answer_as_each_would_alone() -> None:
    prompts = [f"Write one sentence about the number {n}." for n in range(8)]
    async with loaded_backend(n_ctx=512, threads=1, slots=8) as backend:

        async def answer(prompt: str) -> str:
            text, _ = await collect(backend.generate(chat(("user", prompt), max_tokens=24, **GREEDY_COLD)))
            return text

        async def scenario() -> None:
            alone = [await answer(prompt) for prompt in prompts]
            together: dict[int, str] = {}
            # Each answer alone took the least recently used sequence: the eight now run in
            # sequences in another order than their ids.
            reused = backend.graphs_reused()

            async def run(i: int) -> None:
                together[i] = await answer(prompts[i])

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for i in range(len(prompts)):
                        tg.start_soon(run, i)
            assert [together[i] for i in range(len(prompts))] == alone
            assert all(alone)
            # Steps of the same sequences generating share one graph, built once then reused
            # (a graph is built anew when one joins or ends: ~15 reuses here, none with the
            # rows in the sequences' order of arrival).
            assert backend.graphs_reused() - reused >= 8

        await scenario()


async def test_a_cancelled_sequence_frees_its_cells_and_the_others_stream_on(two_slots: LlamaBackend) -> None:
    story = two_slots.generate(chat(("user", "Write a long story about a lighthouse."), max_tokens=300,
                                    temperature=0.0))
    other = chat(("user", "Count from one to twenty in words."), max_tokens=60, **GREEDY_COLD)
    expected, _ = await collect(two_slots.generate(other))
    results: dict[str, Any] = {}

    async def keep_streaming() -> None:
        results["other"] = await collect(two_slots.generate(other))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            seen = 0
            async for event in story:
                seen += isinstance(event, TextChunk)
                if seen == 3:
                    tg.start_soon(keep_streaming)
                if seen == 6:
                    break
            await story.aclose()  # the worker's cancel
            # The story's sequence holds nothing any more, while the other still streams.
            assert 0 in two_slots.sequences()
    text, finished = results["other"]
    assert text == expected and finished.finish_reason in {"stop", "length"}


async def test_a_prefix_evicted_to_host_memory_comes_back() -> None:
    async with loaded_backend(n_ctx=1024, threads=1, slots=1, cache_ram_mb=64) as backend:
        first = chat(("system", SYSTEM), ("user", "When does the ferry leave?"), max_tokens=4, temperature=0.0)
        await collect(backend.generate(first))
        # The one sequence serves another prompt: the first one's cells go to host memory.
        await collect(backend.generate(chat(("user", "Say hi."), max_tokens=4, temperature=0.0)))
        again = chat(("system", SYSTEM), ("user", "Is the lighthouse open?"), max_tokens=4, temperature=0.0)
        _, done = await collect(backend.generate(again))
        expected = common_prefix(backend.prompt_tokens(first), backend.prompt_tokens(again))
        assert done.usage.cached_tokens == expected > 50
