"""Board generations: the live document sheds its tombstones, peers follow to the new one."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from pycrdt import Map
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client_sdk import AsyncClient, TaskStatus
from kanbanmesh.board import constants as c
from kanbanmesh.protocol import codec
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool

pytestmark = pytest.mark.anyio


def generation(client: AsyncClient) -> int:
    return int(client.peer.doc.get("meta", type=Map).get("generation") or 0)


async def test_the_board_rotates_and_clients_and_workers_carry_on(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, retention_s=0, rotate_after=10, orphan_grace_s=0.5)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        await WorkerPool(url, tg).start(slots=2)
        async with AsyncClient(url) as client:
            stale_state = b""
            with anyio.fail_after(60):
                results = []
                for i in range(40):
                    results.append(await (await client.submit(f"task {i}")).result())
                    if i == 5:
                        stale_state = client.peer.doc.get_state()  # a replica of generation 0
                while generation(client) < 1:
                    await client.wait_changed(0.5)
                after = await (await client.submit("after the rotation")).result()
            size = len(client.peer.doc.get_update())
            resets = client.peer.resets
        async with connect(url + "/default") as ws:  # comes back with the old replica
            await ws.send(codec.sync_step1(stale_state))
            with anyio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
        tg.cancel_scope.cancel()
    assert [r.result for r in results] == [f"echo: task {i}" for i in range(40)]
    assert all(r.status is TaskStatus.SUCCEEDED for r in [*results, after])
    assert resets >= 1
    assert size < 4000, "the new generation holds the few live tasks, not the history"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == c.CLOSE_BOARD_ROTATED
    assert "new Y.Doc" in closed.value.rcvd.reason
