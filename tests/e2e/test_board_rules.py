"""Rules of the board that sit between the parts: size limits, stamps, what a lost task keeps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest
from pycrdt import Map

from client_sdk import AsyncClient, TaskStatus
from kanbanmesh.board import constants as c
from kanbanmesh.board.transitions import Column
from kanbanmesh.protocol import codec
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool, cli
from tests.e2e.test_faults import refused_with, task_update

pytestmark = pytest.mark.anyio


async def test_task_size_limit_counts_the_request_in_utf8_not_what_workers_add(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, max_task_bytes=2048)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        pool = WorkerPool(url, tg)
        await pool.start()
        async with AsyncClient(url) as client:
            with anyio.fail_after(20):
                # The done entry holds the request, the output and the result: ~3x the limit.
                long_ascii = await (await client.submit("a" * 1500)).result()
                assert long_ascii.result == "echo: " + "a" * 1500
                # 1400 bytes of UTF-8 (JSON with \\u escapes would count 4200).
                accented = await (await client.submit("é" * 700)).result()
                assert accented.result == "echo: " + "é" * 700
        fields = {"id": "t1", "prompt": "a" * 2100}
        code, reason = await refused_with(url, codec.sync_update(task_update("t1", fields)))
        assert code == c.CLOSE_TASK_TOO_LARGE and "over the limit of 2048" in reason
        tg.cancel_scope.cancel()


async def test_broker_stamps_a_task_created_without_created_at(server_url: str, workers: WorkerPool) -> None:
    await workers.start()
    async with AsyncClient(server_url) as client:
        before = client.peer.board.column_map(Column.TODO)
        # What a JavaScript client leaving out `created_at` writes.
        before["bare"] = Map({"id": "bare", "prompt": "no timestamp"})
        with anyio.fail_after(10):
            entry = await client.task("bare").result()
    assert entry.created_at > 0
    assert entry.timings is not None and 0 <= entry.timings.queued_ms < 10_000


async def test_worker_lost_on_the_last_attempt_keeps_the_streamed_text(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, max_attempts=1, orphan_grace_s=0.2)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        victim = await anyio.open_process(
            cli("worker", "--url", url, "--backend", "echo", "--echo-delay", "25"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            async with AsyncClient(url) as client:
                with anyio.fail_after(20):
                    await client.wait_for_workers(1)
                    task = await client.submit(" ".join(f"word{i}" for i in range(60)))
                    streamed = ""
                    async for chunk in task.stream():
                        streamed += chunk
                        if len(streamed) > 30:
                            victim.kill()
                            break
                    entry = await task.wait()
        finally:
            if victim.returncode is None:
                victim.kill()
            with anyio.fail_after(5):
                await victim.wait()
        tg.cancel_scope.cancel()
    assert entry.status is TaskStatus.FAILED
    assert entry.error is not None and entry.error.code == "worker_lost"
    assert entry.result and entry.result.startswith(streamed)
    assert entry.result == entry.output
