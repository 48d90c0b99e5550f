"""The real server takes the direct websocket path for board messages, and it holds up."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from client_sdk import AsyncClient
from kanbanmesh.server.direct_ws import DirectChannel
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool

pytestmark = pytest.mark.anyio


async def test_board_messages_go_out_on_the_direct_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []
    send_now = DirectChannel.send_now

    def counting(self: DirectChannel, message: bytes) -> bool:
        sent.append(len(message))
        return send_now(self, message)

    monkeypatch.setattr(DirectChannel, "send_now", counting)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, Settings(port=0, data_dir=tmp_path))
        pool = WorkerPool(url, tg)
        await pool.start()
        async with AsyncClient(url) as client:
            with anyio.fail_after(20):
                results = [await (await client.submit(f"direct {i}")).result() for i in range(20)]
        tg.cancel_scope.cancel()
    assert [r.result for r in results] == [f"echo: direct {i}" for i in range(20)]
    # Every task's assignment and its answer, at least, left that way.
    assert len(sent) >= 40


def test_without_the_protocol_a_websocket_gets_no_direct_channel() -> None:
    """Under another ASGI server (or Starlette's test client) the room talks through Starlette."""
    assert DirectChannel.of({"type": "websocket", "extensions": {}}, "/default") is None
    assert DirectChannel.of({"type": "websocket"}, "/default") is None
