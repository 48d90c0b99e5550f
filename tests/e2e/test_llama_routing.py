"""Cache-aware routing with the real bundled model: two llama workers, one slot each. A
conversation's next turn goes to the worker whose prompt cache holds its earlier turns (and
reads only the new part), and to the other worker while that one is busy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from client_sdk import AsyncClient, Column, TaskHandle, TaskStatus
from kanbanmesh.board.prefix import prefix_hashes
from tests.e2e.backend_workers import running_worker
from tests.worker.llama_direct import loaded_backend
from worker.backends.llama import LlamaBackend

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SYSTEM = "You are a terse assistant. Answer in one short sentence."
FAST = {"max_tokens": 12, "temperature": 0.0}


@pytest.fixture
async def two_backends() -> AsyncIterator[tuple[LlamaBackend, LlamaBackend]]:
    async with (loaded_backend(n_ctx=1024, threads=1, slots=1) as first,
                loaded_backend(n_ctx=1024, threads=1, slots=1) as second):
        yield first, second


async def finished(handle: TaskHandle) -> tuple[str, str, int]:
    entry = await handle.result()
    assert entry.status is TaskStatus.SUCCEEDED, entry.error
    assert entry.usage is not None
    return str(entry.worker), entry.result or "", entry.usage.cached_tokens


async def advertised(client: AsyncClient, worker_id: str, turns: list[tuple[str, str]]) -> None:
    """Until `worker_id` advertises the prefix of `turns` (its digest rides its next presence)."""
    wanted = prefix_hashes(turns)[-1]
    while not any(w.id == worker_id and wanted in w.cache for w in client.workers()):
        with anyio.move_on_after(0.5):
            await client.peer.presence_changed.wait()


async def test_the_next_turn_goes_to_the_worker_holding_the_conversation(
    server_url: str, two_backends: tuple[LlamaBackend, LlamaBackend]
) -> None:
    one, two = two_backends
    with anyio.fail_after(120):
        async with (running_worker(server_url, one, worker_id="llama-a"),
                    running_worker(server_url, two, worker_id="llama-b"),
                    AsyncClient(server_url, owner="ann") as client):
            await client.wait_for_workers(2)
            turns = [("system", SYSTEM), ("user", "Name a colour.")]
            worker, answer, cached = await finished(await client.submit(
                messages=[{"role": r, "content": c} for r, c in turns], params=FAST))
            assert cached == 0
            turns.append(("assistant", answer))
            await advertised(client, worker, turns)
            other = "llama-b" if worker == "llama-a" else "llama-a"

            # Turn 2 (the whole conversation resent, as OpenAI clients do): the same worker,
            # which reads only what its cache lacks.
            turns.append(("user", "Name another one."))
            second = await client.submit(messages=[{"role": r, "content": c} for r, c in turns], params=FAST)
            worker_2, answer_2, cached_2 = await finished(second)
            assert worker_2 == worker and cached_2 > 20
            turns.append(("assistant", answer_2))
            await advertised(client, worker, turns)

            # That worker busy with a long answer of the same conversation, the next turn goes
            # to the other one (which has nothing of it cached).
            long = await client.submit(
                messages=[{"role": r, "content": c} for r, c in [*turns, ("user", "Tell a long story.")]],
                params={"max_tokens": 400, "temperature": 0.0})
            while client.peer.board.locate(long.id) is not Column.DOING:
                await client.wait_changed(0.5)
            assert client.get(long.id)[1].worker == worker  # the cache took it there too
            turns.append(("user", "And a third colour?"))
            third = await client.submit(messages=[{"role": r, "content": c} for r, c in turns], params=FAST)
            worker_3, _, cached_3 = await finished(third)
            assert worker_3 == other and cached_3 == 0
            await long.cancel()
