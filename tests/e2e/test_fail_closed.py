"""Nothing a client sends and nothing on disk takes the server down; what it holds is bounded.

A real server on 127.0.0.1; its data dir is written to directly where a test needs an entry no
check ever saw (as an older version, or a hand edit, could have left it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pycrdt import Doc, Map, Text

from client_sdk import AsyncClient, ConnectError, TaskStatus
from kanbanmesh.board import constants as c
from kanbanmesh.board.transitions import Column
from kanbanmesh.server.runner import serve
from kanbanmesh.server.store import BoardStore
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool

pytestmark = pytest.mark.anyio


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def _malformed_board() -> tuple[bytes, dict[str, str]]:
    """A board document holding entries no check would let in, and what each should become:
    the id of a task that must end failed, by column it was written in."""
    doc: Doc[Any] = Doc()
    with doc.transaction():
        todo = doc.get(c.TODO, type=Map)
        todo["deep"] = Map({"id": "deep", "prompt": "x", "params": _deep(2000)})
        todo["wide"] = Map({"id": "wide", "prompt": "x", "params": {"stop": ["s"] * 50_000}})
        todo["types"] = Map({"id": "types", "prompt": 42, "priority": "high", "attempt": {"x": 1}})
        todo["nan"] = Map({"id": "nan", "prompt": "x", "created_at": math.nan})
        todo["not a task id!"] = Map({"id": "not a task id!", "prompt": "x"})
        todo["plain"] = {"id": "plain", "prompt": "x"}  # a plain object, not a Y.Map
        prepared = doc.get(c.PREPARED, type=Map)
        prepared["nested"] = Map({"id": "nested", "prompt": "x", "worker": "w", "attempt": 1,
                                  "params": Map({"max_tokens": 4})})
        doing = doc.get(c.DOING, type=Map)
        doing["mismatch"] = Map({"id": "other", "prompt": "x", "worker": "w", "attempt": 1,
                                 "output": Text("partial")})
    failed = {"deep": "todo", "wide": "todo", "types": "todo", "nan": "todo", "plain": "todo",
              "nested": "prepared", "mismatch": "doing"}
    return doc.get_update(), failed


async def test_a_server_restarted_on_malformed_entries_serves_and_fails_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    update, failed = _malformed_board()
    async with BoardStore(data / "boards.sqlite3") as store:
        store.append(c.DEFAULT_BOARD, update)
        await store.flush()
    settings = Settings(port=0, data_dir=data, orphan_grace_s=0.5)
    for _ in range(2):  # and again: the repair itself was stored, nothing is failed twice
        async with anyio.create_task_group() as tg:
            url = await tg.start(serve, settings)
            workers = WorkerPool(url, tg)
            await workers.start()
            async with AsyncClient(url) as client, httpx.AsyncClient(base_url="http" + url[2:]) as http:
                board = client.peer.board
                for task_id in failed:
                    column, entry = board.read(task_id)
                    assert column is Column.DONE and entry.status is TaskStatus.FAILED, task_id
                    assert entry.error is not None and entry.error.code == "invalid_task"
                    reply = await http.get(f"/boards/default/tasks/{task_id}")
                    assert reply.status_code == 200 and reply.json()["entry"]["status"] == "failed"
                assert board.locate("not a task id!") is None
                # The rest of the board goes on.
                with anyio.fail_after(20):
                    entry = await (await client.submit("after the repair")).result()
                assert entry.result == "echo: after the repair"
                assert (await http.get("/healthz")).status_code == 200
            tg.cancel_scope.cancel()


async def test_boards_held_are_bounded_and_idle_ones_unloaded(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path / "data", max_boards=2, board_idle_s=0.5)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        async with AsyncClient(url, "a") as a, AsyncClient(url, "b"):
            kept = await a.submit("kept on board a", durable_timeout_s=5)  # no worker: stays queued
            # Two boards are held and busy: a third is refused before the upgrade.
            with pytest.raises(ConnectError, match="HTTP 503"):
                async with AsyncClient(url, "c", connect_timeout_s=5):
                    pass
        # Both left; b has no open task and is unloaded once idle, so c gets in. a keeps its
        # queued task, so it stays loaded.
        with anyio.fail_after(15):
            while True:
                try:
                    async with AsyncClient(url, "c", connect_timeout_s=5):
                        break
                except ConnectError:
                    await anyio.sleep(0.2)  # polling the server's idle unloading, bounded above
        async with httpx.AsyncClient(base_url="http" + url[2:]) as http:
            health = (await http.get("/healthz")).json()
        assert health["boards_loaded"] <= 2 and "b" not in health["boards"]
        # An unloaded board comes back whole on its next use.
        async with AsyncClient(url, "a") as again:
            assert again.peer.board.locate(kept.id) is Column.TODO
        tg.cancel_scope.cancel()
