"""Identity comes from the credential: worker and broker ids bound to the token's subject,
client ids bound to one subject, tokens that expire on open connections, `/metrics` and
`/healthz` with auth on. A real server with auth on, real websocket peers."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client_sdk import AsyncClient, ConnectError, TaskStatus
from kanbanmesh.auth import AuthError, Identity, create_token
from kanbanmesh.board import constants as c
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.cli import main
from kanbanmesh.errors import ConnectionClosedError
from kanbanmesh.peer import BoardPeer, board_url
from kanbanmesh.protocol import codec
from tests.e2e.test_security import SECRET, refused, secure_url, secure_worker, token
from worker.service import Worker

pytestmark = pytest.mark.anyio

__all__ = ["secure_url", "secure_worker"]  # fixtures, imported for the tests below


async def test_a_worker_id_belongs_to_its_token_subject(secure_url: str, secure_worker: Worker) -> None:
    # The real worker's id is `<its subject>/...`, as the server requires.
    assert secure_worker.id.startswith("worker-host/worker-")
    # Another worker token cannot announce it, nor any id outside its own subject.
    for forged in (secure_worker.id, "worker-host/other", "worker-nobody"):
        error = await refused(
            secure_url, TokenRole.WORKER, "mallory", lambda p: None,
            presence={"role": "worker", "id": forged, "slots": 1, "state": "ready"},
        )
        assert error.code == c.CLOSE_POLICY_VIOLATION and "id must be 'mallory/<name>'" in error.reason
    # A broker token likewise.
    error = await refused(
        secure_url, TokenRole.BROKER, "bob", lambda p: None,
        presence={"role": "broker", "id": "broker-x", "since": 0},
    )
    assert error.code == c.CLOSE_POLICY_VIOLATION
    # Within its own subject it may, and the mesh still works for clients.
    async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "alice")) as alice:
        with anyio.fail_after(20):
            entry = await (await alice.submit("still served")).result()
    assert entry.status is TaskStatus.SUCCEEDED and entry.worker == secure_worker.id


async def test_a_client_id_of_another_subject_is_refused(secure_url: str) -> None:
    async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "alice")) as alice:
        client_id = alice.peer.awareness.client_id
        forged = codec.encode_awareness([codec.AwarenessEntry(client_id, 999, {"role": "client"})])
        url = board_url(secure_url, "default", token(TokenRole.CLIENT, "mallory"))
        async with connect(url) as ws:
            await ws.send(codec.awareness_message(forged))
            with anyio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == c.CLOSE_POLICY_VIOLATION
        assert "another connection" in closed.value.rcvd.reason
        # Alice's own state is untouched.
        assert alice.peer.awareness.get_local_state() is not None


async def test_a_peer_back_on_a_new_connection_takes_its_client_id_over(secure_url: str) -> None:
    """Its old connection not yet noticed gone, the same subject's new connection announces the
    same client id with a higher clock: taken over at once, not refused."""
    async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "alice")) as alice:
        client_id = alice.peer.awareness.client_id
        back = codec.encode_awareness([codec.AwarenessEntry(client_id, 999, {"role": "client", "id": "back"})])
        async with connect(board_url(secure_url, "default", token(TokenRole.CLIENT, "alice"))) as ws:
            await ws.send(codec.awareness_message(back))
            async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "bob")) as bob:
                with anyio.fail_after(10):
                    while bob.peer.peers().get(client_id, {}).get("id") != "back":
                        await bob.wait_changed(0.5)


async def test_a_connection_is_closed_when_its_token_expires(secure_url: str) -> None:
    peer = BoardPeer(secure_url, token=token(TokenRole.CLIENT, "alice", ttl_s=2))
    async with anyio.create_task_group() as tg:
        await tg.start(peer.start)
        with anyio.fail_after(10):
            while peer.error is None:
                await peer.changed.wait()
        tg.cancel_scope.cancel()
    assert isinstance(peer.error, ConnectionClosedError)
    assert peer.error.code == c.CLOSE_TOKEN_EXPIRED and "token expired" in peer.error.reason


async def test_a_peer_with_a_token_source_renews_its_token(secure_url: str, secure_worker: Worker) -> None:
    lifetimes = itertools.chain([2.0], itertools.repeat(600.0))
    issued: list[float] = []

    def fresh_token() -> str:
        ttl = next(lifetimes)
        issued.append(ttl)
        return token(TokenRole.CLIENT, "alice", ttl_s=ttl)

    async with AsyncClient(secure_url, token=fresh_token) as alice:
        with anyio.fail_after(15):
            while len(issued) < 2 or not alice.peer.synced:  # closed with 4401, back with a new one
                await alice.wait_changed(0.5)
            entry = await (await alice.submit("after the renewal")).result()
    assert alice.peer.error is None and entry.status is TaskStatus.SUCCEEDED


async def test_metrics_need_an_admin_or_metrics_token(secure_url: str) -> None:
    async with httpx.AsyncClient(base_url="http" + secure_url[2:]) as http:
        assert (await http.get("/metrics")).status_code == 401
        for role in (TokenRole.CLIENT, TokenRole.WORKER, TokenRole.BROKER):
            reply = await http.get("/metrics", headers=_bearer(token(role, "someone")))
            assert reply.status_code == 403, role
        for role in (TokenRole.ADMIN, TokenRole.METRICS):
            reply = await http.get("/metrics", headers=_bearer(token(role, "prometheus", boards=("*",))))
            assert reply.status_code == 200 and "kanbanmesh_" in reply.text, role
        # A metrics token reads nothing else, and opens no board.
        metrics = _bearer(token(TokenRole.METRICS, "prometheus", boards=("*",)))
        assert (await http.get("/boards/default/tasks/x", headers=metrics)).status_code == 403
    with pytest.raises(ConnectError, match="HTTP 403"):
        async with AsyncClient(secure_url, token=token(TokenRole.METRICS, "prometheus", boards=("*",))):
            pass


async def test_healthz_names_no_board_with_auth_on(secure_url: str) -> None:
    tenant = token(TokenRole.CLIENT, "alice", boards=("tenant-a",))
    async with (AsyncClient(secure_url, token=tenant, board="tenant-a"),
                httpx.AsyncClient(base_url="http" + secure_url[2:]) as http):
        body = (await http.get("/healthz")).json()
    assert body["status"] == "ok" and body["boards_loaded"] >= 1
    assert "tenant-a" not in str(body)


def test_a_token_that_would_be_expired_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    for ttl in ("0.5", "0", "-3", "nan"):
        result = CliRunner().invoke(main, ["token", "create", "--role", "client", "--subject", "a",
                                           "--ttl", ttl, "--auth-secret-file", str(secret)])
        assert result.exit_code != 0 and "at least 1 s" in result.output, (ttl, result.output)
    with pytest.raises(AuthError):
        create_token(SECRET, Identity(subject="a", role=TokenRole.CLIENT, boards=["*"]), 0.999)
    result = CliRunner().invoke(main, ["token", "create", "--role", "client", "--subject", "a",
                                       "--ttl", "1.5", "--auth-secret-file", str(secret)])
    assert result.exit_code == 0, result.output


def _bearer(value: str) -> dict[str, Any]:
    return {"Authorization": f"Bearer {value}"}


