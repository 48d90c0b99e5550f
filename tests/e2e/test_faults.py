"""Bad input and crashes: refused with a reason, nothing else lost."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import httpx
import pytest
from pycrdt import Doc, Map
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client_sdk import AsyncClient, KanbanMeshError, TaskStatus, TransportError, UpdateRefusedError
from kanbanmesh.board import constants as c
from kanbanmesh.board.transitions import Column
from kanbanmesh.protocol import codec
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import ServerProcess, WorkerPool

pytestmark = pytest.mark.anyio


async def refused_with(url: str, *messages: bytes) -> tuple[int, str]:
    """Send raw messages on a fresh connection; return the close code and reason."""
    async with connect(url + "/default") as ws:
        for message in messages:
            await ws.send(message)
        with anyio.fail_after(5):
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                return exc.rcvd.code, exc.rcvd.reason


def task_update(key: str, fields: dict[str, object], *, as_map: bool = True) -> bytes:
    doc = Doc()
    with doc.transaction():
        doc.get(c.TODO, type=Map)[key] = Map(fields) if as_map else fields
    return doc.get_update()


@pytest.mark.parametrize(
    "garbage, code, reason",
    [
        (os.urandom(64), 1002, "malformed"),
        (b"\x00", 1002, "malformed"),
        (codec.sync_update(b"\x01\x02\x03")[:-1] + b"", 1002, "malformed"),
        (codec.sync_update(os.urandom(32)), c.CLOSE_INVALID_UPDATE, "does not decode"),
        (codec.sync_update(task_update("t1", {"id": "t1"})), c.CLOSE_INVALID_TASK, "exactly one"),
        (codec.sync_update(task_update("t1", {"id": "other", "prompt": "x"})), c.CLOSE_INVALID_TASK, "differs from its key"),
        # A valid task's fields as a plain JSON object: no peer would take it for an entry.
        (codec.sync_update(task_update("t1", {"id": "t1", "prompt": "x"}, as_map=False)), c.CLOSE_INVALID_TASK,
         "must be a Y.Map, not a plain object"),
        (codec.sync_update(task_update("t1", {"id": "t1", "prompt": "x", "params": {"max_tokens": "many"}})),
         c.CLOSE_INVALID_TASK, "max_tokens"),
        (codec.sync_update(task_update("t1", {"id": "t1", "prompt": "x" * 2_000_000})), c.CLOSE_TASK_TOO_LARGE,
         "over the limit"),
        (codec.awareness_message(b"\x01\x05\x01\x03{x}"), 1002, "JSON"),
    ],
    ids=["random", "truncated", "short-sync", "bad-update", "no-prompt", "id-mismatch", "plain-object", "bad-param",
         "oversized-task", "bad-awareness"],
)
async def test_garbage_is_refused_with_a_reason_and_harms_nobody(
    server_url: str, workers: WorkerPool, garbage: bytes, code: int, reason: str
) -> None:
    await workers.start()
    async with AsyncClient(server_url) as bystander:
        before = await (await bystander.submit("before")).result(timeout_s=10)
        got_code, got_reason = await refused_with(server_url, garbage)
        assert got_code == code and reason in got_reason, (got_code, got_reason)
        after = await (await bystander.submit("after")).result(timeout_s=10)
        assert before.result == "echo: before" and after.result == "echo: after"
        assert bystander.peer.board.locate("t1") is None  # nothing of a refused update lands
    async with httpx.AsyncClient() as http:
        health = (await http.get(server_url.replace("ws", "http") + "/healthz")).json()
    assert health["status"] == "ok"


async def test_a_refused_write_is_dropped_and_the_sdk_carries_on(server_url: str, workers: WorkerPool) -> None:
    """The refused write would be sent again at every sync from the replica that holds it: the
    peer starts a new replica without it, reports the refusal as a typed error, and serves."""
    await workers.start()
    async with AsyncClient(server_url) as client:
        refusals: list[KanbanMeshError] = []
        client.peer.on_refused(refusals.append)
        with client.peer.doc.transaction():
            client.peer.board.column_map(Column.TODO)["bad"] = Map({"id": "bad"})  # no prompt
        with anyio.fail_after(10):
            while not refusals:
                await client.wait_changed(1.0)
            await client.peer.wait_synced()
        [refusal] = refusals
        assert isinstance(refusal, UpdateRefusedError) and refusal.code == c.CLOSE_INVALID_TASK
        assert "exactly one" in refusal.reason
        assert client.peer.board.locate("bad") is None
        with anyio.fail_after(20):
            entry = await (await client.submit("after the refusal")).result()
        assert entry.result == "echo: after the refusal"


async def test_oversized_message_is_refused_with_1009(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, max_message_bytes=64 * 1024)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        code, _ = await refused_with(url, codec.sync_update(b"\x00" * 100_000))
        assert code == c.CLOSE_MESSAGE_TOO_BIG
        async with AsyncClient(url) as client:  # the server carries on
            assert client.peer.synced
        tg.cancel_scope.cancel()


async def test_awareness_for_another_connections_client_id_is_refused_for_now(
    server_url: str, workers: WorkerPool
) -> None:
    """On an open server nobody can tell a peer back on a new connection (its old one not yet
    noticed gone) from another peer: the update is refused with 1013, a code that means "try
    again later" (not fatal), and the owner's state stays. With auth, the same subject takes
    its client id over at once (tests/e2e/test_credentials.py)."""
    worker = await workers.start()
    async with AsyncClient(server_url) as client:
        [(client_id, _)] = [(cid, s) for cid, s in client.peer.peers().items() if s.get("id") == worker.id]
    forged = codec.encode_awareness([codec.AwarenessEntry(client_id, 999, {"role": "worker", "id": "forged"})])
    code, reason = await refused_with(server_url, codec.awareness_message(forged))
    assert code == c.CLOSE_TRY_AGAIN_LATER and "another connection" in reason
    assert code not in c.FATAL_CLOSE_CODES | c.REFUSAL_CLOSE_CODES
    async with AsyncClient(server_url) as client:
        assert client.peer.peers()[client_id].get("id") == worker.id


async def test_idle_connections_get_keepalives(tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, Settings(port=0, data_dir=tmp_path, keepalive_s=0.2))
        async with connect(url + "/default") as ws:
            with anyio.fail_after(5):
                assert codec.parse_message(await ws.recv()).step is codec.SyncStep.STEP1  # type: ignore[union-attr]
                # then the broker's presence, then keepalives: nothing else happens on this board
                while (message := await ws.recv()) != codec.KEEPALIVE:
                    assert isinstance(codec.parse_message(message), codec.AwarenessMessage)
                assert await ws.recv() == codec.KEEPALIVE
        tg.cancel_scope.cancel()


async def test_invalid_board_name_is_refused_before_upgrade(server_url: str) -> None:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        async with connect(server_url + "/..bad"):
            pass
    assert info.value.response.status_code == 404


def wait_flushed(server: ServerProcess) -> None:
    from tests.conftest import anyio_deadline

    deadline = anyio_deadline(10)
    while server.wait_healthy()["unflushed_writes"] != 0:
        deadline.check()
        deadline.pause()


async def test_server_sigkill_keeps_queued_tasks(server_process: ServerProcess) -> None:
    server_process.start()
    ids = []
    async with AsyncClient(server_process.url) as client:
        for i in range(5):
            ids.append((await client.submit(f"queued {i}")).id)
        async with AsyncClient(server_process.url) as other:  # the server has applied them
            with anyio.fail_after(5):
                while len(other.peer.board.ids(Column.TODO)) < 5:
                    await other.wait_changed(0.5)
    await anyio.to_thread.run_sync(wait_flushed, server_process)
    server_process.kill()  # SIGKILL
    server_process.start()
    async with anyio.create_task_group() as tg:
        pool = WorkerPool(server_process.url, tg)
        await pool.start(slots=2)
        async with AsyncClient(server_process.url) as client:
            with anyio.fail_after(20):
                results = [await client.task(i).result() for i in ids]
        tg.cancel_scope.cancel()
    assert [r.result for r in results] == [f"echo: queued {i}" for i in range(5)]
    assert all(r.status is TaskStatus.SUCCEEDED for r in results)


async def test_sigterm_flushes_and_a_client_rides_through_a_restart(server_process: ServerProcess) -> None:
    server_process.start()
    async with AsyncClient(server_process.url) as client:
        first = await client.submit("before restart")
        async with AsyncClient(server_process.url) as other:
            with anyio.fail_after(5):
                while first.id not in other.peer.board.ids(Column.TODO):
                    await other.wait_changed(0.5)
        server_process.stop()  # SIGTERM: flush, exit
        server_process.start()
        async with anyio.create_task_group() as tg:
            pool = WorkerPool(server_process.url, tg)
            await pool.start()
            with anyio.fail_after(20):
                second = await client.submit("after restart")  # same client, reconnected
                assert (await first.result()).result == "echo: before restart"
                assert (await second.result()).result == "echo: after restart"
            tg.cancel_scope.cancel()


async def test_a_submitted_task_survives_sigkill_right_after_submit_returns(
    server_process: ServerProcess,
) -> None:
    server_process.start()
    async with AsyncClient(server_process.url) as client:
        # No waiting for the store here: `submit` returns once the server confirms the task
        # is on disk, and that is the whole promise.
        ids = [(await client.submit(f"durable {i}")).id for i in range(20)]
        server_process.kill()  # SIGKILL, at once
    server_process.start()
    async with AsyncClient(server_process.url) as client:
        on_board = set(client.peer.board.ids(Column.TODO))
    assert set(ids) <= on_board


async def test_submit_without_a_server_reports_it_was_not_confirmed(server_process: ServerProcess) -> None:
    server_process.start()
    async with AsyncClient(server_process.url) as client:
        server_process.kill()
        with pytest.raises(TransportError, match="did not confirm"):
            await client.submit("nobody is listening", durable_timeout_s=0.5)


async def test_a_server_started_again_in_the_same_process_accepts_connections(tmp_path: Path) -> None:
    """A server cancelled at once (inside uvicorn's startup) used to leave its socket watched
    by the event loop after closing it: the next server given the same descriptor number in
    this process never accepted a connection."""
    for attempt in range(3):
        async with anyio.create_task_group() as tg:
            url = await tg.start(serve, Settings(port=0, data_dir=tmp_path / str(attempt)))
            if attempt:
                with anyio.fail_after(10):
                    async with httpx.AsyncClient(base_url="http" + url[2:], timeout=5) as http:
                        assert (await http.get("/healthz")).status_code == 200
                    async with AsyncClient(url) as client:
                        assert client.peer.synced
            tg.cancel_scope.cancel()
