"""Task graphs against hostile shapes on a real server: a wide fan-in of large parents costs
the server no read of their requests per child; a graph outlives a SIGKILL of the server and
a rotation of the board."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from pycrdt import Map

from client_sdk import AsyncClient, TaskCancelledError, TaskFailedError, TaskStatus, result_ref
from kanbanmesh.board import constants as c
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.templates import MAX_PARENTS
from kanbanmesh.board.transitions import Column
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import ServerProcess, WorkerPool
from tests.e2e.test_security import SECRET, new_task, refused, token

pytestmark = pytest.mark.anyio


async def test_children_of_many_large_parents_are_released_without_reading_them_whole(
    server_url: str, workers: WorkerPool
) -> None:
    await workers.start(slots=8)
    async with AsyncClient(server_url) as client:
        with anyio.fail_after(120):
            big = "x" * 500_000  # echoed: each parent's entry holds ~1 MB
            parents = [await client.submit(big, task_id=f"p{i}", durable_timeout_s=None) for i in range(MAX_PARENTS)]
            for handle in parents:
                assert (await handle.result()).status is TaskStatus.SUCCEEDED
            children = [f"c{i}" for i in range(40)]
            todo = client.peer.board.column_map(Column.TODO)
            started = time.perf_counter()
            with client.peer.doc.transaction():  # one update: 40 children x 64 parents
                for child in children:
                    todo[child] = Map({"id": child, "prompt": "go", "owner": client.owner, "created_at": 1.0,
                                       "after": [p.id for p in parents]})
            done = client.peer.board
            while not all(done.locate(child) is Column.DONE for child in children):
                await client.wait_changed(1.0)
            elapsed = time.perf_counter() - started
    assert all(done.read(child)[1].status is TaskStatus.SUCCEEDED for child in children)
    # Reading each parent whole for each child: ~20 s here (each child ~0.3 s of the loop); ~3 s without.
    assert elapsed < 10, elapsed


async def test_a_graph_waiting_in_todo_survives_a_sigkill_of_the_server(server_process: ServerProcess) -> None:
    """Killed with -9 while a chain and a fan-in wait (no worker yet): after the restart every
    task runs in order, with its parents' results, once."""
    server_process.start()
    async with AsyncClient(server_process.url) as client:
        with anyio.fail_after(30):
            await client.submit("root", task_id="p")
            await client.submit("side", task_id="q")
            await client.submit(f"mid {result_ref('p')}", after=["p"], task_id="c")
            await client.submit(f"end {result_ref('c')} {result_ref('q')}", after=["c", "q"], task_id="g")
            await client.submit("orphan", after=["nowhere"], task_id="o")  # fails: no such parent
    server_process.kill()
    server_process.start()
    async with anyio.create_task_group() as tg:
        await WorkerPool(server_process.url, tg).start(slots=4)
        async with AsyncClient(server_process.url) as client:
            with anyio.fail_after(60):
                end = await client.task("g").result()
                with pytest.raises(TaskFailedError):
                    await client.task("o").result()
        tg.cancel_scope.cancel()
    assert end.result == "echo: end echo: mid echo: root echo: side"
    assert end.attempt == 1


async def test_a_graph_waiting_in_todo_carries_over_a_rotation(tmp_path: Path) -> None:
    """The board rotates (section 9) while a child waits for a parent still in `todo`: in the
    new generation the child still waits, and runs with the parent's result."""
    settings = Settings(port=0, data_dir=tmp_path, retention_s=0, rotate_after=10, orphan_grace_s=0.5)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        async with AsyncClient(url) as client:
            with anyio.fail_after(60):
                await client.submit("root", task_id="p")
                await client.submit(f"then {result_ref('p')}", after=["p"], task_id="c")
                await client.submit("other root", task_id="q")
                await client.submit("never", after=["q"], task_id="d")
                for i in range(30):  # tasks that leave the board: the rotation's trigger
                    await (await client.submit(f"filler {i}")).cancel()
                while int(client.peer.doc.get("meta", type=Map).get("generation") or 0) < 1:
                    await client.wait_changed(0.5)
                assert client.peer.board.locate("c") is Column.TODO
                await client.task("q").cancel()
                await WorkerPool(url, tg).start()
                child = await client.task("c").result(30)
                with pytest.raises(TaskCancelledError):
                    await client.task("d").result(30)
        tg.cancel_scope.cancel()
    assert child.result == "echo: then echo: root"


@pytest.fixture
async def secure_url(tmp_path: Path) -> AsyncIterator[str]:
    settings = Settings(port=0, data_dir=tmp_path, auth_secret=SECRET)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        yield await tg.start(serve, settings)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    "write, reason",
    [
        (lambda p: p.board.column_map(Column.TODO).__setitem__(
            "t-r", new_task("t-r", after=["mine"], after_results={"mine": "forged"})), "may not set 'after_results'"),
        (lambda p: p.board.column_map(Column.TODO).__setitem__(
            "t-e", new_task("t-e", enriching=[])), "may not set 'enriching'"),
        (lambda p: p.board.column_map(Column.TODO)["waits"].__setitem__("after", []), "only cancel/ack"),
        (lambda p: p.board.column_map(Column.TODO)["waits"].__setitem__("after_results", {}), "only cancel/ack"),
    ],
    ids=["after_results", "enriching", "after-edited", "after_results-later"],
)
async def test_a_client_writes_no_graph_field_of_the_servers_nor_edits_after(
    secure_url: str, write: Callable[[BoardPeer], None], reason: str
) -> None:
    async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "alice")) as alice:
        with anyio.fail_after(20):
            await alice.submit("first", task_id="mine")
            await alice.submit(f"then {result_ref('mine')}", after=["mine"], task_id="waits")
            error = await refused(secure_url, TokenRole.CLIENT, "alice", write)
            assert error.code == c.CLOSE_FORBIDDEN and reason in error.reason, error
            entry = alice.peer.board.read("waits")[1]
    assert entry.after == ["mine"] and entry.enriching == ["after"] and entry.after_results is None


async def test_an_archived_parent_of_another_owner_is_no_parent(secure_url: str) -> None:
    """Looked up in the archive (section 9), a parent is its owner's only: another tenant's
    child naming it fails as for no task, and reads nothing of it."""
    async with anyio.create_task_group() as tg:
        await WorkerPool(secure_url, tg, token=token(TokenRole.WORKER, "worker-host")).start()
        async with AsyncClient(secure_url, token=token(TokenRole.CLIENT, "alice")) as alice, \
                AsyncClient(secure_url, token=token(TokenRole.CLIENT, "bob")) as bob:
            with anyio.fail_after(30):
                secret = await alice.submit("alice's secret", task_id="secret")
                await secret.result()
                await secret.ack()  # archived now: off the live board
                while alice.peer.board.locate("secret") is not None:
                    await alice.wait_changed(0.5)
                theirs = await bob.submit(f"leak: {result_ref('secret')}", after=["secret"])
                mine = await alice.submit(f"mine: {result_ref('secret')}", after=["secret"])
                leak = await theirs.wait()
                assert (await mine.result()).result == "echo: mine: echo: alice's secret"
        tg.cancel_scope.cancel()
    assert leak.status is TaskStatus.FAILED and leak.after_results is None
    assert leak.error is not None and "no task 'secret' of this owner" in leak.error.message
    assert "alice's secret" not in (leak.result or "")


async def test_a_cycle_across_two_updates_ends_both_tasks(server_url: str) -> None:
    """`x` names `y` before `y` exists, then `y` names `x`: no deadlock, both end failed."""
    async with AsyncClient(server_url) as client:
        with anyio.fail_after(30):
            x = await client.submit("x", after=["y"], task_id="x")
            y = await client.submit("y", after=["x"], task_id="y")
            ends = [await x.wait(), await y.wait()]
    assert [e.status for e in ends] == [TaskStatus.FAILED, TaskStatus.FAILED]
    assert "no task 'y'" in (ends[0].error.message if ends[0].error else "")
    assert "parent task 'x' failed" in (ends[1].error.message if ends[1].error else "")


async def test_a_child_that_repeats_a_reference_fails_before_its_text_is_built(
    server_url: str, workers: WorkerPool
) -> None:
    """~80,000 references to a 20 kB result in a 1 MB prompt would be a 1.6 GB text: the
    server measures it before replacing anything, and fails the child."""
    await workers.start()
    async with AsyncClient(server_url) as client:
        with anyio.fail_after(60):
            parent = await client.submit("r" * 20_000, task_id="p")
            await parent.result()
            prompt = result_ref("p") * 80_000
            child = await client.submit(prompt, after=["p"], task_id="c")
            entry = await child.wait()
    assert entry.status is TaskStatus.FAILED and entry.error is not None
    assert entry.error.code == "dependency_too_large" and "characters" in entry.error.message
