"""Cache-aware routing end to end: a real server (embedded broker, conversation store) and two
in-process workers whose backend advertises what it "ran" (`CachingEchoBackend`). A
conversation's next turn goes to the worker that ran its earlier turns, and to the other one
while that worker is full."""

from __future__ import annotations

import anyio
import pytest

from client_sdk import AsyncClient, TaskHandle, TaskStatus
from kanbanmesh.board.prefix import prefix_hashes
from tests.e2e.backend_workers import CachingEchoBackend, running_worker

pytestmark = pytest.mark.anyio

# Worker ids: without cache routing every tie goes to the greater id, "cache-b"; the test has
# "cache-a" hold the conversation, so only the cache sends its turns there.
A, B = "cache-a", "cache-b"


async def wait_advertised(client: AsyncClient, worker_id: str, prefix: str) -> None:
    """Until `worker_id` advertises `prefix`, as this client (and so the server's broker,
    which hears awareness before it forwards it) sees it."""
    while not any(w.id == worker_id and prefix in w.cache for w in client.workers()):
        with anyio.move_on_after(0.5):
            await client.peer.presence_changed.wait()


async def worker_of(handle: TaskHandle) -> str:
    entry = await handle.result()
    assert entry.status is TaskStatus.SUCCEEDED
    return str(entry.worker)


async def test_a_conversation_follows_its_cache_until_that_worker_is_full(server_url: str) -> None:
    cache_a, cache_b = CachingEchoBackend(), CachingEchoBackend()
    with anyio.fail_after(30):
        async with (running_worker(server_url, cache_a, worker_id=A) as worker_a,
                    running_worker(server_url, cache_b, worker_id=B),
                    AsyncClient(server_url, owner="alice") as client):
            await client.wait_for_workers(2)
            # b's slot held: the first turn can only go to a. (Both workers start a task here,
            # so both are proven and trust plays no part later.)
            held_b = await client.submit("hold b")
            await cache_b.holding.wait()
            first = await client.submit("my name is Ada", conversation="c1")
            assert await worker_of(first) == A
            cache_b.release.set()
            assert await worker_of(held_b) == B
            u1_a1 = [("user", "my name is Ada"), ("assistant", "echo: my name is Ada")]
            await wait_advertised(client, A, prefix_hashes(u1_a1)[-1])

            second = await client.submit("I like tea", conversation="c1")
            assert await worker_of(second) == A  # by load alone: b, the greater id
            u2_a2 = [("user", "I like tea"), ("assistant", "echo: I like tea")]
            await wait_advertised(client, A, prefix_hashes([*u1_a1, *u2_a2])[-1])

            # The third turn goes to a as well, and keeps its only slot busy...
            third = await client.submit("hold on", conversation="c1")
            await cache_a.holding.wait()
            # ...so the next one, matching a's cache as well, goes to b.
            fourth = await client.submit("what is my name?", conversation="c1")
            assert await worker_of(fourth) == B
            cache_a.release.set()
            assert await worker_of(third) == A
            assert worker_a.completed == 3


class OversizedDigest(CachingEchoBackend):
    def cache_digest(self) -> dict[str, int]:
        return {f"{i:016x}": i for i in range(65)}


class FailingDigest(CachingEchoBackend):
    def cache_digest(self) -> dict[str, int]:
        raise RuntimeError("the engine is gone")


@pytest.mark.parametrize("backend", [OversizedDigest, FailingDigest])
async def test_a_digest_the_broker_would_drop_is_announced_empty_and_the_worker_serves(
    server_url: str, backend: type[CachingEchoBackend], caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(20):
        async with (running_worker(server_url, backend(), worker_id="odd") as worker,
                    AsyncClient(server_url) as client):
            await client.wait_for_workers(1)
            states = [s for s in client.peer.peers().values() if s.get("id") == "odd"]
            assert states[0]["cache"] == {}
            for prompt in ("one", "two"):
                assert await worker_of(await client.submit(prompt)) == "odd"
    assert worker.completed == 2
    assert len([r for r in caplog.records if "cache digest" in r.getMessage()]) == 1  # once
