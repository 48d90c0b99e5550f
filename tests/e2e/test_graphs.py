"""Task graphs end to end: a real server, echo workers, the SDK (docs/protocol.md, section 12)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from pycrdt import Map

from broker import Broker, BrokerSettings, PeerView
from client_sdk import AsyncClient, Client, TaskEntry, TaskStatus, result_ref
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board import constants as c
from kanbanmesh.board.graph import DEPENDENCY_FAILED
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.transitions import Column
from kanbanmesh.peer import BoardPeer
from kanbanmesh.protocol import codec
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool, cli
from tests.e2e.test_faults import refused_with, task_update

pytestmark = pytest.mark.anyio

SECRET = "g" * 40


@asynccontextmanager
async def serving(settings: Settings, worker_token: str | None = None) -> AsyncIterator[tuple[str, WorkerPool]]:
    """A server with `settings`, and a pool of echo workers for it (none started yet)."""
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        yield url, WorkerPool(url, tg, token=worker_token)
        tg.cancel_scope.cancel()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[str, WorkerPool]]:
    """A server whose lost tasks fail at once (one attempt, no reconnect grace), and a pool."""
    async with serving(Settings(port=0, data_dir=tmp_path, orphan_grace_s=0.2, reconnect_grace_s=0.0)) as served:
        yield served


def dependency_error(entry: TaskEntry) -> str:
    assert entry.error is not None and entry.error.code == DEPENDENCY_FAILED, entry
    return entry.error.message


async def wait_until(client: AsyncClient, check: object, timeout_s: float = 20.0) -> None:
    with anyio.fail_after(timeout_s):
        while not check():  # type: ignore[operator]
            await client.wait_changed(1.0)


async def test_a_child_runs_after_its_parents_with_their_results(server_url: str, workers: WorkerPool) -> None:
    await workers.start(slots=2)
    async with AsyncClient(server_url) as client:
        with anyio.fail_after(30):
            a = await client.submit("alpha", task_id="a")
            b = await client.submit("beta", task_id="b")
            # `after` only orders `b`: its result is not referred to, so it is not copied.
            child = await client.submit(f"join {result_ref('a')}!", after=[a, b], task_id="join")
            entry = await child.result()
            parents = [await a.result(), await b.result()]
    assert entry.status is TaskStatus.SUCCEEDED
    assert entry.result == "echo: join echo: alpha!"
    assert entry.after_results == {"a": "echo: alpha"}
    assert entry.enriching is None
    assert entry.started_at is not None
    assert all(p.finished_at is not None and p.finished_at <= entry.started_at for p in parents)


async def test_a_slow_parent_keeps_its_child_waiting_in_todo(server_url: str, workers: WorkerPool) -> None:
    await workers.start(slots=2, delay_ms=40)
    async with AsyncClient(server_url) as client:
        with anyio.fail_after(30):
            await client.submit(" ".join(f"w{i}" for i in range(40)), task_id="slow")
            child = await client.submit(f"then {result_ref('slow')}", after=["slow"], task_id="then")
            seen: list[Column] = []
            while (found := client.peer.board.locate("slow")) is not Column.DONE:
                column, entry = child.entry()
                seen.append(column)
                if found is Column.DOING:
                    assert column is Column.TODO and entry.enriching == ["after"]
                await client.wait_changed(1.0)
            entry = await child.result()
    assert Column.TODO in seen and Column.PREPARED not in seen and Column.DOING not in seen
    assert entry.result == "echo: then echo: " + " ".join(f"w{i}" for i in range(40))


async def test_a_cancelled_parent_cancels_its_waiting_children_and_theirs(server_url: str, workers: WorkerPool) -> None:
    await workers.start(slots=1, delay_ms=50)
    async with AsyncClient(server_url) as client:
        with anyio.fail_after(30):
            parent = await client.submit(" ".join(["x"] * 200), task_id="p")
            other = await client.submit("unrelated", task_id="o")
            child = await client.submit("c", after=["p", "o"], task_id="c")
            grandchild = await client.submit("g", after=["c"], task_id="g")
            await wait_until(client, lambda: client.peer.board.locate("p") is Column.DOING)
            await parent.cancel()
            child_entry, grand_entry = await child.wait(), await grandchild.wait()
            assert (await other.wait()).status is TaskStatus.SUCCEEDED
    assert child_entry.status is TaskStatus.CANCELLED and grand_entry.status is TaskStatus.CANCELLED
    assert "'p' was cancelled" in dependency_error(child_entry)
    assert "'c' was cancelled" in dependency_error(grand_entry)
    assert child_entry.worker is None and child_entry.started_at is None  # never assigned


async def test_a_failed_parent_fails_its_children_transitively(mesh: tuple[str, WorkerPool]) -> None:
    url, pool = mesh
    await pool.start(slots=1, delay_ms=50)
    async with AsyncClient(url) as client:
        with anyio.fail_after(30):
            parent = await client.submit(" ".join(["x"] * 200), task_id="p", max_attempts=1)
            child = await client.submit("c", after=["p"], task_id="c")
            grandchild = await client.submit("g", after=["c"], task_id="g")
            await wait_until(client, lambda: client.peer.board.locate("p") is Column.DOING)
            pool.scopes[0].cancel()  # the worker vanishes: one attempt only, so the parent fails
            assert (await parent.wait()).status is TaskStatus.FAILED
            child_entry, grand_entry = await child.wait(), await grandchild.wait()
    assert child_entry.status is TaskStatus.FAILED and grand_entry.status is TaskStatus.FAILED
    assert "'p' failed" in dependency_error(child_entry)
    assert "'c' failed" in dependency_error(grand_entry)


async def test_cancelling_a_waiting_child_cancels_its_own_children(server_url: str) -> None:
    async with AsyncClient(server_url) as client:  # no worker: the parent never runs
        with anyio.fail_after(20):
            await client.submit("never runs", task_id="p")
            child = await client.submit("c", after=["p"], task_id="c")
            grandchild = await client.submit("g", after=["c"], task_id="g")
            assert (await child.cancel()).status is TaskStatus.CANCELLED
            grand_entry = await grandchild.wait()
    assert grand_entry.status is TaskStatus.CANCELLED
    assert "'c' was cancelled" in dependency_error(grand_entry)


async def test_a_parent_in_the_archive_still_satisfies_its_child(server_url: str, workers: WorkerPool) -> None:
    await workers.start()
    async with AsyncClient(server_url) as client:
        with anyio.fail_after(30):
            parent = await client.submit("archived soon", task_id="old")
            await parent.result()
            await parent.ack()  # archived at once
            await wait_until(client, lambda: client.peer.board.locate("old") is None)
            assert await client.archived("old") is not None
            entry = await (await client.submit(f"re: {result_ref('old')}", after=["old"])).result()
    assert entry.result == "echo: re: echo: archived soon"


async def test_an_unknown_parent_fails_the_child_at_once(server_url: str, workers: WorkerPool) -> None:
    await workers.start()
    async with AsyncClient(server_url) as client:
        with anyio.fail_after(20):
            entry = await (await client.submit("orphan", after=["nobody"], task_id="orphan")).wait()
            late = await client.submit("the parent, too late", task_id="nobody")
            assert (await late.result()).status is TaskStatus.SUCCEEDED
    assert entry.status is TaskStatus.FAILED
    assert "no task 'nobody' of this owner" in dependency_error(entry)


async def test_a_cycle_in_one_update_fails_every_task_on_it(server_url: str, workers: WorkerPool) -> None:
    await workers.start()
    async with AsyncClient(server_url) as client:
        todo = client.peer.board.column_map(Column.TODO)
        with client.peer.board.doc.transaction():  # as a JS client writing a graph in one go
            for task_id, after in (("x", ["y"]), ("y", ["x"]), ("z", ["y"]), ("free", [])):
                fields: dict[str, object] = {"id": task_id, "prompt": task_id, "created_at": 1.0}
                if after:
                    fields["after"] = after
                todo[task_id] = Map(fields)
        with anyio.fail_after(20):
            x, y, z, free = [await client.task(t).wait() for t in ("x", "y", "z", "free")]
    assert free.status is TaskStatus.SUCCEEDED
    assert x.status is y.status is z.status is TaskStatus.FAILED
    assert "waits for itself" in dependency_error(x) and "waits for itself" in dependency_error(y)
    assert "'y' failed" in dependency_error(z) or "waits for itself" in dependency_error(z)


async def test_a_waiting_child_survives_a_server_restart(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, orphan_grace_s=0.2)
    async with serving(settings) as (url, _), AsyncClient(url) as client:
        await client.submit("first", task_id="p")
        await client.submit(f"then {result_ref('p')}", after=["p"], task_id="c")
    async with serving(settings) as (url, pool):  # the same data dir: the board as it was stored
        await pool.start()
        async with AsyncClient(url) as client:
            with anyio.fail_after(30):
                entry = await client.task("c").result()
    assert entry.result == "echo: then echo: first"


async def test_a_child_cannot_wait_for_or_read_another_owners_task(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, auth_secret=SECRET, orphan_grace_s=0.2)  # type: ignore[arg-type]

    def token(role: TokenRole, subject: str) -> str:
        return create_token(SECRET, Identity(subject=subject, role=role, boards=["default"]), 600)

    async with serving(settings, token(TokenRole.WORKER, "worker-host")) as (url, pool):
        await pool.start()
        async with AsyncClient(url, token=token(TokenRole.CLIENT, "alice")) as alice, \
                AsyncClient(url, token=token(TokenRole.CLIENT, "bob")) as bob:
            with anyio.fail_after(30):
                secret = await alice.submit("alice's secret", task_id="secret")
                await secret.result()
                mine = await alice.submit(f"mine: {result_ref('secret')}", after=["secret"])
                theirs = await bob.submit(f"leak: {result_ref('secret')}", after=["secret"])
                ordered_only = await bob.submit("x", after=["secret"])
                assert (await mine.result()).result == "echo: mine: echo: alice's secret"
                leak, other = await theirs.wait(), await ordered_only.wait()
    for entry in (leak, other):
        assert entry.status is TaskStatus.FAILED and entry.after_results is None
        assert "no task 'secret' of this owner" in dependency_error(entry)
        assert "alice's secret" not in (entry.result or "")


async def test_a_reference_outside_after_is_refused(server_url: str) -> None:
    from client_sdk import InvalidTaskError

    async with AsyncClient(server_url) as client:
        with pytest.raises(InvalidTaskError, match="not in `after`"):
            await client.submit(f"x {result_ref('other')}", after=["a"])
        with pytest.raises(InvalidTaskError, match="itself"):
            await client.submit("x", after=["me"], task_id="me")
        assert client.peer.board.counts()[Column.TODO] == 0  # refused before anything was written


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"prompt": "{{result:elsewhere}}", "after": ["a"]}, "not in `after`"),
        ({"prompt": "x", "after": ["raw"]}, "itself"),
        ({"prompt": "x", "after": [f"t{i}" for i in range(65)]}, "at most 64"),
        ({"prompt": "x", "after": [1]}, "string"),
    ],
)
async def test_a_stock_client_writing_a_bad_graph_is_refused(server_url: str, fields: dict[str, object], why: str) -> None:
    code, reason = await refused_with(server_url, codec.sync_update(task_update("raw", {"id": "raw", **fields})))
    assert code == c.CLOSE_INVALID_TASK and why in reason, reason


async def test_results_too_large_for_the_child_fail_it(tmp_path: Path) -> None:
    async with serving(Settings(port=0, data_dir=tmp_path, max_task_bytes=2048)) as (url, pool):
        await pool.start()
        async with AsyncClient(url) as client:
            with anyio.fail_after(20):
                parent = await client.submit("a" * 1500, task_id="big")
                twice = f"{result_ref('big')} {result_ref('big')}"
                entry = await (await client.submit(twice, after=[parent])).wait()
                small = await (await client.submit(f"{result_ref('big')}", after=[parent])).wait()
    assert entry.status is TaskStatus.FAILED and entry.error is not None
    assert entry.error.code == "dependency_too_large" and "over the limit of 2048" in entry.error.message
    assert small.status is TaskStatus.SUCCEEDED and small.result == "echo: echo: " + "a" * 1500


async def test_the_blocking_client_submits_a_graph(server_url: str, workers: WorkerPool) -> None:
    await workers.start(slots=2)

    def graph() -> TaskEntry:
        with Client(server_url) as client:
            parts = [client.submit(f"part {n}") for n in (1, 2)]
            combined = client.submit(" & ".join(result_ref(p.id) for p in parts), after=[parts[0], parts[1].id])
            return combined.result(timeout_s=20)

    with anyio.fail_after(30):
        entry = await anyio.to_thread.run_sync(graph)
    assert entry.result == "echo: echo: part 1 & echo: part 2"


async def test_cli_submit_waits_for_the_tasks_named_after(server_url: str, workers: WorkerPool) -> None:
    await workers.start()
    async with AsyncClient(server_url) as client:
        await client.submit("from the sdk", task_id="sdk-parent")
        command = cli("submit", "--url", server_url, "--id", "cli-child", "--after", "sdk-parent", "--no-stream",
                      "quoting {{result:sdk-parent}}")
        with anyio.fail_after(30):
            done = await anyio.run_process(command, check=False)
        entry = await client.task("cli-child").result(timeout_s=10)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == entry.result == "echo: quoting echo: from the sdk"


async def test_two_standalone_brokers_keep_a_graph_in_order(tmp_path: Path) -> None:
    """Brokers keep no graph state: two standalone ones (one leads) never assign a waiting
    task, whatever the order in which they see the board."""
    settings = Settings(port=0, data_dir=tmp_path, orphan_grace_s=0.2, embedded_broker=False)
    async with serving(settings) as (url, pool), anyio.create_task_group() as brokers:
        for name in ("one", "two"):
            peer = BoardPeer(url)
            await brokers.start(peer.start)
            await brokers.start(Broker(PeerView(peer), BrokerSettings(name=name)).run)
        await pool.start(slots=2, delay_ms=20)
        async with AsyncClient(url) as client:
            with anyio.fail_after(30):
                parts = [await client.submit(" ".join([f"p{n}"] * 20)) for n in (1, 2)]
                child = await client.submit(f"{result_ref(parts[0].id)}/{result_ref(parts[1].id)}", after=parts)
                entry = await child.result()
                finished = [await p.result() for p in parts]
        brokers.cancel_scope.cancel()
    assert entry.started_at is not None and all(p.finished_at is not None and p.finished_at <= entry.started_at
                                                for p in finished)
    assert entry.result == f"echo: {finished[0].result}/{finished[1].result}"
