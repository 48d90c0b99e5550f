"""The network breaks under a running task: peers reconnect, nothing is lost or doubled.

A real server runs in this process; workers and clients reach it through a `TcpProxy` that
the test cuts (every connection reset) or black-holes (nothing forwarded, connections kept).
A ledger peer connected straight to the server records every version of every `done` entry.
The last tests send updates out of order, as a reconnect can: ahead of what they build on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from pycrdt import Doc
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from client_sdk import AsyncClient, TaskStatus
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.board.roles import PeerRole, TokenRole
from kanbanmesh.board.schema import TaskRequest
from kanbanmesh.board.transitions import Column
from kanbanmesh.peer import BoardPeer
from kanbanmesh.protocol import codec
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.support.ledger import OBSERVER_PRESENCE, DoneLedger
from tests.support.tcp_proxy import TcpProxy
from worker import Worker, WorkerSettings
from worker.backends import EchoBackend

pytestmark = pytest.mark.anyio

PROMPT = " ".join(f"word{i}" for i in range(40))
EXPECTED = "echo: " + PROMPT


SECRET = "network-cut-tests-" + "s" * 32  # when a test turns auth on


@dataclass
class Mesh:
    """A server, a proxy in front of it, a ledger peer on the server itself."""

    url: str
    proxy: TcpProxy
    ledger_peer: BoardPeer
    ledger: DoneLedger
    tg: TaskGroup
    auth: bool

    def token(self, role: TokenRole, subject: str) -> str | None:
        """A token for `role` if the server checks them, else None."""
        if not self.auth:
            return None
        return create_token(SECRET, Identity(subject=subject, role=role, boards=["default"]), 600)

    async def worker(self, url: str, *, delay_ms: float, heartbeat_s: float = 10.0) -> tuple[Worker, BoardPeer]:
        """An in-process echo worker connected to `url` (the server's or the proxy's)."""
        peer = BoardPeer(url, "default", token=self.token(TokenRole.WORKER, "workers"))
        worker = Worker(peer, EchoBackend(delay_ms=delay_ms), WorkerSettings(heartbeat_s=heartbeat_s))
        await self.tg.start(peer.start)
        await self.tg.start(worker.run)
        return worker, peer

    def client(self, url: str) -> AsyncClient:
        return AsyncClient(url, token=self.token(TokenRole.CLIENT, "alice"), owner="alice" if self.auth else "")

    async def until(self, condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
        """Wait until `condition()` holds, re-checking after each update the ledger sees."""
        with anyio.fail_after(timeout_s):
            while not condition():
                with anyio.move_on_after(0.1):  # other replicas change without telling it
                    await self.ledger_peer.changed.wait()

    async def converged(self, *peers: BoardPeer) -> None:
        """Wait until `peers` hold exactly what the server (by the ledger peer) holds."""
        def state(peer: BoardPeer) -> dict[int, int]:
            return codec.decode_state_vector(peer.doc.get_state())

        await self.until(lambda: all(state(p) == state(self.ledger_peer) for p in peers))


@pytest.fixture
async def mesh(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Mesh]:
    """Settings overrides as the indirect parameter; `auth: True` turns tokens on."""
    overrides = dict(getattr(request, "param", {}))
    auth = bool(overrides.pop("auth", False))
    if auth:
        overrides["auth_secret"] = SecretStr(SECRET)
    defaults: dict[str, Any] = {"orphan_grace_s": 0.5, "retry_backoff_s": 0.1}
    settings = Settings(port=0, data_dir=tmp_path, **{**defaults, **overrides})
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        admin = create_token(SECRET, Identity(subject="ledger", role=TokenRole.ADMIN, boards=["*"]), 600) if auth else None
        async with TcpProxy.to_url(url) as proxy, BoardPeer(url, "default", token=admin) as ledger_peer:
            ledger_peer.set_presence(OBSERVER_PRESENCE)
            ledger = DoneLedger(ledger_peer.board)
            yield Mesh(url, proxy, ledger_peer, ledger, tg, auth)
            ledger.close()
        tg.cancel_scope.cancel()


def columns_of(peer: BoardPeer, task_id: str) -> list[Column]:
    return [col for col in Column if task_id in peer.board.column_map(col)]


async def test_proxy_resets_both_ends_on_cut_and_holds_data_while_paused() -> None:
    received: list[bytes] = []
    got, reset = anyio.Event(), anyio.Event()

    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                async for chunk in stream:
                    received.append(chunk)
                    got.set()
                    await stream.send(chunk)
            except anyio.BrokenResourceError:
                reset.set()  # the server's end was reset too

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        async with TcpProxy("127.0.0.1", listener.extra(anyio.abc.SocketAttribute.local_port)) as proxy:
            with anyio.fail_after(5):
                stream = await anyio.connect_tcp("127.0.0.1", proxy.port)
                await stream.send(b"one")
                assert await stream.receive() == b"one"
                proxy.pause()
                await stream.send(b"two")
                with anyio.move_on_after(0.2):  # a black hole: nothing arrives...
                    await got.wait()
                assert received == [b"one"]
                proxy.resume()  # ...until the path is back, then what was held
                assert await stream.receive() == b"two"
                await proxy.cut()
                with pytest.raises(anyio.BrokenResourceError):
                    await stream.receive()
                await reset.wait()
                assert proxy.connections == 0 and proxy.accepted == 1
                await stream.aclose()
        tg.cancel_scope.cancel()


async def test_cut_mid_stream_reconnects_everyone_and_the_task_finishes_once(mesh: Mesh) -> None:
    worker, worker_peer = await mesh.worker(mesh.proxy.url, delay_ms=25)
    async with mesh.client(mesh.proxy.url) as client:
        with anyio.fail_after(30):
            await client.wait_for_workers(1)
            task = await client.submit(PROMPT)
            streamed = ""
            async for piece in task.stream():
                streamed += piece
                if mesh.proxy.accepted == 2 and len(streamed) > len(EXPECTED) // 3:
                    await mesh.proxy.cut()  # worker and client lose their connections at once
                    assert mesh.proxy.connections == 0
            entry = await task.result()
            await mesh.converged(worker_peer, client.peer)
    assert mesh.proxy.accepted >= 4  # both came back by themselves, through the proxy
    assert streamed == entry.result == EXPECTED  # invariant 4, across the restart
    assert entry.status is TaskStatus.SUCCEEDED
    assert len(mesh.ledger.finishes[task.id]) == 1, mesh.ledger.finishes[task.id]  # finished once
    for peer in (worker_peer, client.peer, mesh.ledger_peer):
        assert columns_of(peer, task.id) == [Column.DONE]
    assert worker.id == entry.worker




@pytest.mark.parametrize(
    "mesh",
    [
        # Either way the server refuses the late finish (4403): the task is no longer the
        # worker's (without auth, a connection that announced only workers is held to the
        # worker's rules all the same).
        pytest.param({"lease_s": 2.0}, id="auth-off"),
        pytest.param({"lease_s": 2.0, "auth": True}, id="auth-on"),
    ],
    indirect=True,
)
async def test_black_holed_worker_loses_its_task_and_writes_nothing_over_the_rescue(mesh: Mesh) -> None:
    stale, stale_peer = await mesh.worker(mesh.proxy.url, delay_ms=20, heartbeat_s=0.5)
    async with mesh.client(mesh.url) as client:
        with anyio.fail_after(30):
            await client.wait_for_workers(1)
            task = await client.submit(PROMPT)
            doing = mesh.ledger_peer.board.column_map(Column.DOING)

            def running(worker: Worker, attempt: int) -> bool:
                entry = doing.get(task.id)
                return (entry is not None and entry.get(c.F_WORKER) == worker.id
                        and entry.get(c.F_ATTEMPT) == attempt and len(str(entry.get(c.F_OUTPUT))) > 10)

            def idle(peer: BoardPeer) -> bool:  # by the worker's own presence: no task held
                return not (peer.awareness.get_local_state() or {}).get(c.A_TASKS)

            await mesh.until(lambda: running(stale, 1))
            mesh.proxy.pause()  # the stale worker's heartbeats and writes stop reaching the server
            # The rescuer is slower: it is still streaming attempt 2 when the link comes back.
            rescuer, rescuer_peer = await mesh.worker(mesh.url, delay_ms=100, heartbeat_s=0.5)
            await mesh.until(lambda: running(rescuer, 2))  # the lease ran out: requeued, reassigned
            # The cut-off worker is through with attempt 1, one way or another, before the link
            # comes back: what it then sends is what this test is about.
            await mesh.until(lambda: idle(stale_peer))
            mesh.proxy.resume()
            entry = await task.result(timeout_s=20)
            await mesh.until(lambda: idle(rescuer_peer))
            await mesh.converged(rescuer_peer, client.peer, stale_peer)
    assert (entry.attempt, entry.worker, entry.result) == (2, rescuer.id, EXPECTED)
    assert len(mesh.ledger.finishes[task.id]) == 1, mesh.ledger.finishes[task.id]
    # The server closed it with 4403 (its late write was not its own any more); it started
    # over with a new replica and serves on, it did not stop.
    assert stale_peer.refusals >= 1 and stale_peer.error is None
    for peer in (rescuer_peer, client.peer, mesh.ledger_peer, stale_peer):
        assert columns_of(peer, task.id) == [Column.DONE]


async def test_an_update_sent_ahead_of_what_it_builds_on_is_refused(mesh: Mesh) -> None:
    # A replica's three updates: create, assign, start, the last sent alone. Taken as it is,
    # pycrdt would show the entry at once, the broker would act on it, and a move of it made
    # before the rest arrived can erase the task on every replica (docs/protocol.md section 10: refused).
    doc: Doc[Any] = Doc()
    board = BoardDoc(doc)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    board.create(TaskRequest(id="t", prompt="x"))
    board.move("t", Column.TODO, Column.PREPARED, PeerRole.BROKER, set_fields={c.F_WORKER: "w", c.F_ATTEMPT: 1})
    board.move("t", Column.PREPARED, Column.DOING, PeerRole.WORKER, new_output=True)
    refused = False
    with anyio.fail_after(10):
        async with connect(mesh.url + "/default") as ws:
            await ws.send(codec.sync_update(updates[2]))  # the start, without what it moves
            await ws.send(codec.sync_step1(Doc().get_state()))  # answered only if it was taken
            try:
                while not isinstance(message := codec.parse_message(await ws.recv()), codec.SyncMessage) \
                        or message.step is not codec.SyncStep.STEP2:
                    pass
            except ConnectionClosed:
                refused = True
    assert refused, "an update with missing dependencies was applied"
    assert mesh.ledger_peer.board.locate("t") is None




async def test_a_write_during_the_reconnect_handshake_does_not_overtake_offline_writes() -> None:
    """A stand-in server that answers a reconnect's sync step 1 late, as a loaded one does."""
    server_doc: Doc[Any] = Doc()
    gaps: list[bytes] = []
    session = 0
    release = anyio.Event()  # the second session's sync step 1 goes out on this

    async def handler(ws: ServerConnection) -> None:
        nonlocal session
        session += 1
        if session > 1:
            await release.wait()
        await ws.send(codec.sync_step1(server_doc.get_state()))
        async for data in ws:
            message = codec.parse_message(bytes(data))  # type: ignore[arg-type]
            if not isinstance(message, codec.SyncMessage):
                continue
            if message.step is codec.SyncStep.STEP1:
                await ws.send(codec.sync_step2(server_doc.get_update(message.payload)))
                continue
            before = server_doc.get_state()
            server_doc.apply_update(message.payload)
            # Every write here creates a task: an update that adds nothing integrated stays
            # pending, having come before what it builds on.
            if message.payload != codec.EMPTY_UPDATE and server_doc.get_state() == before:
                gaps.append(message.payload)
            if session == 1 and message.payload != codec.EMPTY_UPDATE:
                await ws.close()  # the first session ends as soon as the first write is in

    async with ws_serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with BoardPeer(f"ws://127.0.0.1:{port}", "default") as peer:
            with anyio.fail_after(10):
                peer.board.create(TaskRequest(id="before", prompt="x"))
                while peer.connected:
                    await anyio.sleep(0.01)
                peer.board.create(TaskRequest(id="offline", prompt="x"))  # waits in the doc
                while not peer.connected:
                    await anyio.sleep(0.01)
                peer.board.create(TaskRequest(id="handshake", prompt="x"))  # the new session's
                with anyio.move_on_after(0.5):  # what the peer sends before the server speaks
                    while not gaps:
                        await anyio.sleep(0.01)
                release.set()
                while set(BoardDoc(server_doc).ids(Column.TODO)) != {"before", "offline", "handshake"}:
                    await anyio.sleep(0.01)
    assert not gaps, "a write reached the server ahead of the offline writes it follows"
