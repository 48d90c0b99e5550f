"""A closed client frees its replica: nothing of the board it held stays alive.

Yrs holds the document observers' callbacks; a callback that reaches back to its document
makes a cycle Python's collector cannot see, so a closed client's replica (a whole board)
would stay in memory for good: an app that opens a client per request would grow forever.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from client_sdk import AsyncClient

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
