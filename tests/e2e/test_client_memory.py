"""A closed client, or a stopped worker, frees its replica: nothing of the board it held
stays alive.

Yrs holds the document observers' callbacks; a callback that reaches back to its document
makes a cycle Python's collector cannot see, so a closed client's replica (a whole board)
would stay in memory for good: an app that opens a client per request would grow forever.
"""

from __future__ import annotations

import gc
import weakref

import anyio
import pytest

from client_sdk import AsyncClient
from kanbanmesh.peer import BoardPeer
from worker.backends.echo import EchoBackend
from worker.service import Worker, WorkerSettings

pytestmark = pytest.mark.anyio


async def _use_and_close(url: str) -> tuple[weakref.ref[object], weakref.ref[object]]:
    async with AsyncClient(url) as client:
        await client.submit("hello", durable_timeout_s=10)
        return weakref.ref(client.peer), weakref.ref(client.peer.doc)


async def test_a_closed_client_keeps_no_replica_alive(server_url: str) -> None:
    peer, doc = await _use_and_close(server_url)
    gc.collect()
    assert peer() is None, "the closed client's peer is still alive"
    assert doc() is None, "the closed client's board replica is still alive"


async def _run_a_task_and_stop(url: str) -> tuple[weakref.ref[object], weakref.ref[object]]:
    peer = BoardPeer(url, "default")
    worker = Worker(peer, EchoBackend(), WorkerSettings(name="short-lived"))
    async with AsyncClient(url) as client, anyio.create_task_group() as tg:
        await tg.start(peer.start)
        await tg.start(worker.run)
        with anyio.fail_after(10):
            await (await client.submit("once", durable_timeout_s=None)).result()
        tg.cancel_scope.cancel()
    return weakref.ref(worker), weakref.ref(peer.doc)


async def test_a_stopped_worker_keeps_no_replica_alive(server_url: str) -> None:
    # The worker observes `prepared` on its replica while it runs: Yrs holds that callback.
    worker, doc = await _run_a_task_and_stop(server_url)
    gc.collect()
    assert worker() is None, "the stopped worker is still alive"
    assert doc() is None, "the stopped worker's board replica is still alive"
