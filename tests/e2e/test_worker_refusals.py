"""A worker whose write is refused fails that task and keeps serving: it never exits because of
one task. A real server, a real worker peer with the echo backend."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from pycrdt import Map

from client_sdk import AsyncClient, TaskStatus
from kanbanmesh.board import constants as c
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool

pytestmark = pytest.mark.anyio


async def test_a_worker_whose_finish_is_refused_fails_that_task_and_serves_on(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, max_task_bytes=1024, max_entry_bytes=2048)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        async with AsyncClient(url) as client:
            assert EntryLimits.of_board(client.peer.board) == EntryLimits(max_task_bytes=1024, max_entry_bytes=2048)
            # Without the limits in `meta` (an older server; on an open server anybody may
            # remove them) the worker cannot see that this answer is too big for the entry.
            with client.peer.doc.transaction():
                del client.peer.doc.get(c.META, type=Map)[c.M_LIMITS]
            await client.peer.durable()
            workers = WorkerPool(url, tg)
            worker = await workers.start(slots=2)
            assert EntryLimits.of_board(workers.workers[0].peer.board) is None
            big = await client.submit("word " * 150)  # its echo, twice in `done`, passes 2048 bytes
            small = await client.submit("after the refusal")
            with anyio.fail_after(20):
                refused = await big.wait()
                served = await small.result()
            assert refused.status is TaskStatus.FAILED and refused.error is not None
            assert refused.error.code == "write_refused" and "too large" in refused.error.message
            assert refused.result == ""
            assert served.result == "echo: after the refusal"
            assert worker_refusals(workers) >= 1
            with anyio.fail_after(20):  # and it keeps serving
                again = await (await client.submit("and again")).result()
            assert again.status is TaskStatus.SUCCEEDED and again.worker == worker.id
        tg.cancel_scope.cancel()


async def test_a_worker_stops_an_answer_at_the_entry_limit(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, max_task_bytes=1024, max_entry_bytes=2048)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        workers = WorkerPool(url, tg)
        await workers.start()
        async with AsyncClient(url) as client:
            with anyio.fail_after(20):
                entry = await (await client.submit("word " * 150)).result()
        # Stopped where the entry would pass the limit, as a model at the end of its context.
        assert entry.status is TaskStatus.SUCCEEDED and entry.finish_reason == "length"
        assert 0 < len(entry.result or "") < len("echo: " + "word " * 150)
        assert worker_refusals(workers) == 0
        tg.cancel_scope.cancel()


def worker_refusals(workers: WorkerPool) -> int:
    return workers.workers[0].peer.refusals
