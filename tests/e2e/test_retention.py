"""Finished tasks leave the live board for the archive, and stay retrievable by id."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import httpx
import pytest

from client_sdk import AsyncClient, Column, TaskStatus
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import ServerProcess, WorkerPool, cli

pytestmark = pytest.mark.anyio


async def left_board(client: AsyncClient, task_id: str) -> None:
    while any(task_id in client.peer.board.column_map(col) for col in Column):
        await client.wait_changed(0.5)


async def test_finished_tasks_leave_the_board_after_retention_and_stay_retrievable(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, retention_s=0.5)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        await WorkerPool(url, tg).start()
        async with AsyncClient(url) as client:
            with anyio.fail_after(20):
                task = await client.submit("keep me")
                entry = await task.result()
                await left_board(client, task.id)
                async with AsyncClient(url) as late:  # a client that comes after the archiving
                    assert (await late.task(task.id).result()) == entry
                    column, looked_up = await late.lookup(task.id)
        async with httpx.AsyncClient(base_url="http" + url[2:], timeout=10) as http:
            reply = await http.get(f"/boards/default/tasks/{task.id}")
            missing = await http.get("/boards/default/tasks/nope")
        tg.cancel_scope.cancel()
    assert column is None and looked_up == entry
    assert reply.status_code == 200 and reply.json()["column"] == "archived"
    assert reply.json()["entry"]["result"] == "echo: keep me"
    assert missing.status_code == 404


async def test_an_acknowledged_task_leaves_at_once_and_survives_a_restart(server_process: ServerProcess) -> None:
    server_process.start()  # default retention: 10 minutes
    async with anyio.create_task_group() as tg:
        await WorkerPool(server_process.url, tg).start()
        async with AsyncClient(server_process.url) as client:
            with anyio.fail_after(20):
                task = await client.submit("read and done")
                entry = await task.result()
                assert entry.status is TaskStatus.SUCCEEDED
                await task.ack()
                await left_board(client, task.id)
        tg.cancel_scope.cancel()
    server_process.kill()
    server_process.start()
    shown = await anyio.run_process(
        cli("task", "show", task.id, "--url", server_process.url), stderr=subprocess.STDOUT
    )
    body = json.loads(shown.stdout)
    assert body["column"] == "archived" and body["entry"]["result"] == "echo: read and done"
