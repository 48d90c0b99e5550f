"""Authentication and per-role write authorization, against a real server with auth on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from pycrdt import Map

from client_sdk import AsyncClient, ConnectError, TaskStatus, UpdateRefusedError
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board import constants as c
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.transitions import Column
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from worker.backends.echo import EchoBackend
from worker.service import Worker, WorkerSettings

pytestmark = pytest.mark.anyio

SECRET = "s" * 40


def token(role: TokenRole, subject: str, boards: tuple[str, ...] = ("default",), ttl_s: float = 600) -> str:
    return create_token(SECRET, Identity(subject=subject, role=role, boards=list(boards)), ttl_s)


def expired_token() -> str:
    now = int(time.time())
    claims = {"sub": "alice", "role": "client", "boards": ["default"], "iat": now - 100, "exp": now - 10}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture
async def secure_url(tmp_path: Path) -> AsyncIterator[str]:
    settings = Settings(port=0, data_dir=tmp_path, auth_secret=SECRET, orphan_grace_s=0.5)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        yield await tg.start(serve, settings)
        tg.cancel_scope.cancel()


@pytest.fixture
async def secure_worker(secure_url: str) -> AsyncIterator[Worker]:
    peer = BoardPeer(secure_url, token=token(TokenRole.WORKER, "worker-host"))
    worker = Worker(peer, EchoBackend(delay_ms=20), WorkerSettings(name="secure"))
    async with anyio.create_task_group() as tg:
        await tg.start(peer.start)
        await tg.start(worker.run)
        yield worker
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    "make_token, status",
    [
        (lambda: None, 401),
        (expired_token, 401),
        (lambda: create_token("x" * 40, Identity(subject="a", role=TokenRole.CLIENT, boards=["*"]), 60), 401),
        (lambda: token(TokenRole.CLIENT, "alice", boards=("other",)), 403),
        (lambda: "not-a-jwt", 401),
    ],
    ids=["missing", "expired", "wrong-signature", "wrong-board", "garbage"],
)
async def test_bad_tokens_are_refused_before_the_upgrade(
    secure_url: str, make_token: Callable[[], str | None], status: int
) -> None:
    bad = make_token()
    with pytest.raises(ConnectError, match=f"HTTP {status}"):
        async with AsyncClient(secure_url, token=bad):
            pass


async def test_each_role_does_its_job_with_auth_on(secure_url: str, secure_worker: Worker) -> None:
    async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "alice")) as alice:
        with anyio.fail_after(20):
            entry = await (await alice.submit("hello")).result()
    assert entry.owner == "alice" and entry.status is TaskStatus.SUCCEEDED
    assert entry.worker == secure_worker.id and entry.result == "echo: hello"


async def refused(url: str, role: TokenRole, subject: str, write: Callable[[BoardPeer], None],
                  presence: dict[str, Any] | None = None) -> UpdateRefusedError:
    """Connect with a token, make one write, and return how the server refused it (a peer
    that does not reconnect stops at the refusal)."""
    peer = BoardPeer(url, token=token(role, subject), reconnect=False)
    async with anyio.create_task_group() as tg:
        await tg.start(peer.start)
        if presence is not None:
            peer.set_presence(presence)
        write(peer)
        with anyio.fail_after(10):
            while peer.error is None:
                await peer.changed.wait()
        tg.cancel_scope.cancel()
    assert isinstance(peer.error, UpdateRefusedError), peer.error
    return peer.error


def new_task(task_id: str, **fields: Any) -> Map[Any]:
    return Map({"id": task_id, "prompt": "x", "owner": "alice", "created_at": 1.0, **fields})


async def test_forbidden_writes_are_refused_and_touch_nobody(secure_url: str, secure_worker: Worker) -> None:
    async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "alice")) as alice:
        with anyio.fail_after(20):
            mine = await alice.submit("mine")
            first = await mine.result()
        board = alice.peer.board
        done_before = set(board.ids(Column.DONE))

        def column(peer: BoardPeer, col: Column) -> Map[Any]:
            return peer.board.column_map(col)

        cases: list[tuple[TokenRole, str, Callable[[BoardPeer], None], str]] = [
            (TokenRole.CLIENT, "mallory", lambda p: column(p, Column.TODO).__setitem__("t-m1", new_task("t-m1")),
             "owner must be you"),
            (TokenRole.CLIENT, "alice", lambda p: column(p, Column.DOING).__setitem__("t-a1", new_task("t-a1")),
             "only create tasks in todo"),
            (TokenRole.CLIENT, "alice", lambda p: column(p, Column.DONE)[mine.id].__setitem__("result", "forged"),
             "only cancel/ack"),
            (TokenRole.CLIENT, "mallory", lambda p: column(p, Column.DONE)[mine.id].__setitem__("cancel", True),
             "is not yours"),
            (TokenRole.CLIENT, "alice", lambda p: column(p, Column.DONE).__delitem__(mine.id),
             "only create tasks"),
            (TokenRole.CLIENT, "alice", lambda p: p.doc.get("evil", type=Map).__setitem__("x", 1),
             "unknown root type"),
            (TokenRole.CLIENT, "alice", lambda p: p.doc.get("meta", type=Map).__setitem__("generation", 9),
             "meta map"),
            (TokenRole.WORKER, "w", lambda p: column(p, Column.DONE)[mine.id].__setitem__("result", "forged"),
             "announce yourself"),
            (TokenRole.BROKER, "b", lambda p: column(p, Column.TODO).__setitem__("t-b1", new_task("t-b1")),
             "creates no task"),
            (TokenRole.BROKER, "b", lambda p: column(p, Column.DONE)[mine.id][c.F_OUTPUT].__iadd__("!"),
             "writes no output"),
        ]
        for role, subject, write, reason in cases:
            error = await refused(secure_url, role, subject, write)
            assert error.code == c.CLOSE_FORBIDDEN and reason in error.reason, (role, reason, error)

        # A worker (announced as such) writing a task assigned to another worker.
        impostor = BoardPeer(secure_url, token=token(TokenRole.WORKER, "w"), reconnect=False)
        async with anyio.create_task_group() as tg:
            await tg.start(impostor.start)
            impostor.set_presence({"role": "worker", "id": "w/worker-impostor", "slots": 0})
            with anyio.fail_after(10):
                while not any(s.get("id") == "w/worker-impostor" for s in alice.peer.peers().values()):
                    await alice.wait_changed(0.5)
                column(impostor, Column.DONE)[mine.id]["result"] = "forged"
                while impostor.error is None:
                    await impostor.changed.wait()
            tg.cancel_scope.cancel()
        assert isinstance(impostor.error, UpdateRefusedError)
        assert impostor.error.code == c.CLOSE_FORBIDDEN and "not assigned to you" in impostor.error.reason

        # Everyone else saw nothing of it, and the board carries on.
        with anyio.fail_after(20):
            again = await (await alice.submit("still fine")).result()
        assert again.status is TaskStatus.SUCCEEDED
        assert set(board.ids(Column.DONE)) == done_before | {again.id}
        assert board.read(mine.id)[1] == first
        assert "evil" not in list(alice.peer.doc.keys())


async def test_a_client_cannot_pose_as_a_worker_in_awareness(secure_url: str) -> None:
    error = await refused(
        secure_url, TokenRole.CLIENT, "alice", lambda p: None,
        presence={"role": "worker", "id": "worker-fake", "slots": 8},
    )
    assert error.code == c.CLOSE_POLICY_VIOLATION and "may not announce" in error.reason


async def test_healthz_stays_open_and_the_task_api_needs_a_token(secure_url: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url="http" + secure_url[2:]) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/boards/default/tasks/x")).status_code == 401
        bearer = {"Authorization": f"Bearer {token(TokenRole.CLIENT, 'alice')}"}
        assert (await http.get("/boards/default/tasks/x", headers=bearer)).status_code == 404
        other = {"Authorization": f"Bearer {token(TokenRole.CLIENT, 'alice', boards=('b2',))}"}
        assert (await http.get("/boards/default/tasks/x", headers=other)).status_code == 403


@pytest.fixture
async def limited_url(tmp_path: Path) -> AsyncIterator[str]:
    settings = Settings(
        port=0, data_dir=tmp_path, auth_secret=SECRET,  # type: ignore[arg-type]
        max_open_tasks=3, max_submissions_per_minute=5, max_connections_per_subject=2,
    )
    async with anyio.create_task_group() as tg:
        yield await tg.start(serve, settings)
        tg.cancel_scope.cancel()


async def test_open_tasks_per_owner_are_limited(limited_url: str) -> None:
    async with AsyncClient(limited_url, token=token(TokenRole.CLIENT, "bob")) as other:
        async with AsyncClient(limited_url, token=token(TokenRole.CLIENT, "alice")) as alice:
            for i in range(3):  # no worker: they stay open
                await alice.submit(f"open {i}")
            with pytest.raises(UpdateRefusedError, match="too many open tasks") as info:
                await alice.submit("one too many")
            assert info.value.code == c.CLOSE_TOO_MANY
        # Another owner is not affected, and the three tasks are still there.
        await other.submit("bob's")
        with anyio.fail_after(5):
            while len(other.peer.board.ids(Column.TODO)) < 4:
                await other.wait_changed(0.5)


async def test_submissions_per_minute_are_limited(limited_url: str) -> None:
    async with AsyncClient(limited_url, token=token(TokenRole.CLIENT, "carol")) as carol:
        for i in range(3):
            await carol.submit(f"task {i}")
            await carol.task(carol.peer.board.ids(Column.TODO)[0]).cancel()  # closes it again
    async with AsyncClient(limited_url, token=token(TokenRole.CLIENT, "carol")) as carol:
        for i in range(2):
            await carol.submit(f"more {i}")
        with pytest.raises(UpdateRefusedError, match="too many submissions"):
            await carol.submit("the sixth this minute")


async def test_connections_per_subject_are_limited(limited_url: str) -> None:
    dave = token(TokenRole.CLIENT, "dave")
    async with AsyncClient(limited_url, token=dave), AsyncClient(limited_url, token=dave):
        with pytest.raises(ConnectError, match="HTTP 429"):
            async with AsyncClient(limited_url, token=dave):
                pass
        async with AsyncClient(limited_url, token=token(TokenRole.CLIENT, "erin")):
            pass  # somebody else still gets in
