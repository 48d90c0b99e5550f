"""Faults the mesh rides through: hung workers, lost brokers, drained workers, retries."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from pycrdt import Map

from client_sdk import AsyncClient, TaskEntry, TaskStatus
from kanbanmesh.board import constants as c
from kanbanmesh.board.transitions import Column
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool, cli

pytestmark = pytest.mark.anyio

PROMPT = " ".join(f"word{i}" for i in range(30))
EXPECTED = "echo: " + PROMPT


@asynccontextmanager
async def child(*args: str) -> AsyncIterator[Process]:
    """A `kanbanmesh` subprocess, killed (and reaped) on the way out."""
    process = await anyio.open_process(cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        with anyio.fail_after(10):
            await process.wait()


@asynccontextmanager
async def server(tmp_path: Path, **overrides: object) -> AsyncIterator[str]:
    settings = Settings(port=0, data_dir=tmp_path, orphan_grace_s=0.5, **overrides)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        yield await tg.start(serve, settings)
        tg.cancel_scope.cancel()


def copies(client: AsyncClient, task_id: str) -> list[Column]:
    return [col for col in Column if task_id in client.peer.board.column_map(col)]


async def stream_until(client: AsyncClient, task_id: str, chars: int) -> None:
    async for _ in client.task(task_id).stream():
        found = client.peer.board.entry(task_id)
        if len(str(found[1].get(c.F_OUTPUT) or "")) >= chars:
            return


def worker_client_id(client: AsyncClient, name: str) -> int:
    return next(cid for cid, s in client.peer.peers().items() if s.get(c.A_NAME) == name)


async def test_a_hung_worker_loses_its_task_after_the_lease_and_writes_nothing_when_it_wakes(
    tmp_path: Path,
) -> None:
    async with server(tmp_path, lease_s=2.0, retry_backoff_s=0.1) as url, anyio.create_task_group() as tg:
        async with (
            child("worker", "--url", url, "--backend", "echo", "--echo-delay", "100",
                  "--heartbeat-seconds", "0.3", "--name", "sleeper") as sleeper,
            AsyncClient(url) as client,
        ):
            with anyio.fail_after(30):
                await client.wait_for_workers(1)
                task = await client.submit(PROMPT)
                await stream_until(client, task.id, 20)
                sleeper.send_signal(signal.SIGSTOP)  # hung: connected, silent
                stopped_at = anyio.current_time()
                rescuer = await WorkerPool(url, tg).start(delay_ms=1, name="rescuer")
                entry = await task.result()
                lease_took = anyio.current_time() - stopped_at
                # Wake the sleeper; wait until it has renewed its heartbeat twice (it
                # re-syncs before writing), then the board must still be the rescuer's.
                cid = worker_client_id(client, "sleeper")
                clock = client.peer.awareness.meta[cid]["clock"]
                sleeper.send_signal(signal.SIGCONT)
                while client.peer.awareness.meta.get(cid, {}).get("clock", 0) < clock + 2:
                    await client.wait_changed(0.5)
                final = client.get(task.id)[1]
        tg.cancel_scope.cancel()
    assert lease_took >= 2.0
    assert entry.status is TaskStatus.SUCCEEDED and entry.worker == rescuer.id and entry.attempt == 2
    assert entry.result == EXPECTED
    assert [a.reason for a in entry.attempts] == ["lease_expired"]
    assert final == entry
    assert copies(client, task.id) == [Column.DONE]


async def brokers_present(client: AsyncClient, count: int) -> list[tuple[float, str]]:
    """(since, id) of the brokers on the board, oldest first, once there are `count`."""
    while True:
        found = sorted(
            (s[c.A_SINCE], s[c.A_ID]) for s in client.peer.peers().values() if s.get(c.A_ROLE) == "broker"
        )
        if len(found) == count:
            return found
        await client.wait_changed(0.5)


async def test_a_standby_broker_takes_over_within_2_s_and_no_task_is_assigned_twice(tmp_path: Path) -> None:
    async with server(tmp_path, embedded_broker=False) as url, anyio.create_task_group() as tg:
        pool = WorkerPool(url, tg)
        await pool.start(slots=2, delay_ms=1)
        async with AsyncClient(url) as client, child("broker", "--url", url) as leader:
            with anyio.fail_after(30):
                [(_, leader_id)] = await brokers_present(client, 1)
                async with child("broker", "--url", url):
                    [_, (_, standby_id)] = await brokers_present(client, 2)
                    before = [await client.submit(f"before {i}") for i in range(10)]
                    done_before = [await t.result() for t in before]
                    leader.kill()
                    await leader.wait()
                    killed_at = anyio.current_time()
                    after = await client.submit("after the leader died")
                    done_after = await after.result()
                    takeover = anyio.current_time() - killed_at
                    survivors = [i for _, i in await brokers_present(client, 1)]
        tg.cancel_scope.cancel()
    assert takeover < 2.0
    assert survivors == [standby_id] and standby_id != leader_id
    results: list[TaskEntry] = [*done_before, done_after]
    assert all(r.status is TaskStatus.SUCCEEDED and r.attempt == 1 for r in results)


async def test_sigterm_drains_a_worker_it_finishes_what_it_holds_and_takes_nothing_new(tmp_path: Path) -> None:
    async with server(tmp_path) as url, anyio.create_task_group() as tg:
        async with child("worker", "--url", url, "--backend", "echo", "--echo-delay", "50",
                         "--name", "drainer") as drainer, AsyncClient(url) as client:
            with anyio.fail_after(30):
                [worker] = await client.wait_for_workers(1)
                held = await client.submit(PROMPT)
                await stream_until(client, held.id, 10)
                drainer.send_signal(signal.SIGTERM)
                with anyio.fail_after(5):
                    while client.workers()[0].state.value != "draining":
                        await client.wait_changed(0.5)
                later = await client.submit("after the drain began")
                finished = await held.result()
                await drainer.wait()
                assert later.entry()[0] is Column.TODO  # nobody took it
                rescuer = await WorkerPool(url, tg).start()
                taken_later = await later.result()
        tg.cancel_scope.cancel()
    assert drainer.returncode == 0
    assert finished.worker == worker.id and finished.result == EXPECTED and finished.attempt == 1
    assert taken_later.worker == rescuer.id


async def test_a_lost_attempt_is_recorded_and_retried_after_its_backoff(tmp_path: Path) -> None:
    async with server(tmp_path, retry_backoff_s=0.8) as url, anyio.create_task_group() as tg:
        pool = WorkerPool(url, tg)
        first = await pool.start(delay_ms=50, name="first")
        async with AsyncClient(url) as client:
            with anyio.fail_after(30):
                task = await client.submit(PROMPT)
                await stream_until(client, task.id, 10)
                pool.scopes[0].cancel()  # its connection closes: the attempt is lost
                lost_at = anyio.current_time()
                second = await pool.start(delay_ms=1, name="second")
                while copies(client, task.id) != [Column.PREPARED] and copies(client, task.id) != [Column.DONE]:
                    await client.wait_changed(0.5)
                waited = anyio.current_time() - lost_at
                entry = await task.result()
        tg.cancel_scope.cancel()
    assert waited >= 0.7  # the backoff, give or take the clock's grain
    assert entry.attempt == 2 and entry.worker == second.id and entry.result == EXPECTED
    [record] = entry.attempts
    assert record.attempt == 1 and record.worker == first.id and record.reason == "worker_lost"


async def test_worker_drain_command_drains_a_running_worker_through_the_board(tmp_path: Path) -> None:
    async with server(tmp_path) as url, anyio.create_task_group() as tg:
        async with child("worker", "--url", url, "--backend", "echo", "--echo-delay", "50",
                         "--name", "remote") as remote, AsyncClient(url) as client:
            with anyio.fail_after(30):
                await client.wait_for_workers(1)
                held = await client.submit(PROMPT)
                await stream_until(client, held.id, 10)
                asked = await anyio.run_process(
                    cli("worker", "--url", url, "--drain", "remote"), check=False
                )
                finished = await held.result()
                await remote.wait()
                control = client.peer.doc.get("control", type=Map)
                while "drain/remote" in control:  # removed by the worker before it left
                    await client.wait_changed(0.5)
        tg.cancel_scope.cancel()
    assert asked.returncode == 0, asked.stderr
    assert remote.returncode == 0
    assert finished.status is TaskStatus.SUCCEEDED and finished.result == EXPECTED
