"""Liveness of assignment, and a broker nothing on the board can stop.

- A worker that announces itself ready and never starts what it is given (a stock y-websocket
  client posing as a worker with 1000 slots; a Python peer that hangs before starting) delays
  a task by one start deadline at most each time it gets one, holds at most one at a time, and
  never makes a task fail.
- Entries no check ever saw (written straight into the server's document, as data an older
  version left on disk would be) end failed with `invalid_task`, while the other tasks run,
  under the embedded broker and under a standalone one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream, Process
from pycrdt import Map

from client_sdk import AsyncClient, TaskEntry, TaskStatus
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.board.reads import plain_fields, read_field
from kanbanmesh.board.transitions import Column
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server import runner
from kanbanmesh.server.hub import Hub
from kanbanmesh.server.room import BoardRoom
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool, cli

pytestmark = pytest.mark.anyio

# Greater than any `worker-<12 hex>`: between two workers on probation, a tie goes to the
# greater id, so the impostor is sure to be given the first task.
FAKE_ID = "worker-zzzz-fake"
HUNG_ID = "worker-zzzz-hung"
# What a failed invalid entry may hold: nothing of the old entry but id, owner, created_at.
MINIMAL = {"id", "owner", "prompt", "created_at", "status", "result", "error", "finished_at"}


# -- impostors ---------------------------------------------------------------------------


@dataclass
class JsFakeWorker:
    process: Process
    events: list[dict[str, Any]] = field(default_factory=list)
    ready: anyio.Event = field(default_factory=anyio.Event)

    async def read(self, stream: ByteReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"{"):
                    event = json.loads(line)
                    self.events.append(event)
                    if event["event"] == "ready":
                        self.ready.set()


@asynccontextmanager
async def js_fake_worker(js_dir: Path, url: str, worker_id: str) -> AsyncIterator[JsFakeWorker]:
    """tests/js/fake_worker.mjs: stock yjs + y-websocket, announcing a ready worker."""
    process = await anyio.open_process(
        ["node", str(js_dir / "fake_worker.mjs"), "--url", url, "--id", worker_id, "--slots", "1000"],
        cwd=js_dir, stderr=subprocess.DEVNULL,
    )
    fake = JsFakeWorker(process)
    try:
        async with anyio.create_task_group() as tg:
            assert process.stdout is not None
            tg.start_soon(fake.read, process.stdout)
            with anyio.fail_after(20):
                await fake.ready.wait()
            yield fake
            process.send_signal(signal.SIGTERM)  # it reports what it held, then leaves
            with anyio.fail_after(10):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.fail_after(10):
                await process.wait()


@dataclass
class HungWorker:
    """A Python peer that announces a worker and renews its heartbeat, takes the tasks given to
    it (as a worker hung before its start would) and never starts them."""

    peer: BoardPeer
    worker_id: str
    held: set[str] = field(default_factory=set)  # every task it was given
    most: int = 0  # the most it held at once

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self.peer.start)
            tg.start_soon(self._heartbeat)
            task_status.started()
            while True:
                mine = {
                    key for key, entry in self.peer.board.entries(Column.PREPARED)
                    if isinstance(entry, Map) and read_field(entry, c.F_WORKER) == self.worker_id
                }
                self.held |= mine
                self.most = max(self.most, len(mine))
                with anyio.move_on_after(0.5):
                    await self.peer.changed.wait()

    async def _heartbeat(self) -> None:
        while True:
            self.peer.set_presence({
                c.A_ROLE: "worker", c.A_ID: self.worker_id, c.A_NAME: "hung", c.A_MODELS: [],
                c.A_SLOTS: 1000, c.A_STATE: "ready", c.A_TASKS: [],
            })
            await anyio.sleep(0.5)


async def test_a_stock_js_client_posing_as_a_ready_worker_delays_tasks_but_never_holds_them(
    server_url: str, workers: WorkerPool, js_dir: Path
) -> None:
    """Default settings (start deadline 10 s): ten tasks finish on the real worker within a
    minute, although the impostor announces 1000 free slots and is given the first task."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    real = await workers.start(delay_ms=1, name="real")
    async with js_fake_worker(js_dir, server_url, FAKE_ID) as fake, AsyncClient(server_url) as client:
        with anyio.fail_after(60):
            await client.wait_for_workers(2)
            began = anyio.current_time()
            tasks = [await client.submit(f"task {i}") for i in range(10)]
            results = [await task.result() for task in tasks]
            took = anyio.current_time() - began
    stopped = fake.events[-1]
    assert stopped["event"] == "stopped"
    assert stopped["most"] == 1  # given one task, never more, whatever slots it announced
    assert [r.result for r in results] == [f"echo: task {i}" for i in range(10)]
    assert all(r.status is TaskStatus.SUCCEEDED and r.worker == real.id for r in results)
    delayed = [r for r in results if r.attempts]
    assert [r.id for r in delayed] == stopped["seen"] == [tasks[0].id]
    [record] = delayed[0].attempts
    assert record.reason == "start_timeout" and record.worker == FAKE_ID and delayed[0].attempt == 2
    assert 10.0 <= took < 60.0


async def test_a_worker_that_hangs_before_starting_holds_one_task_at_a_time_and_fails_none(
    tmp_path: Path,
) -> None:
    settings = Settings(port=0, data_dir=tmp_path, orphan_grace_s=0.5, start_timeout_s=1.0)
    async with anyio.create_task_group() as tg:
        url = await tg.start(runner.serve, settings)
        hung = HungWorker(BoardPeer(url), HUNG_ID)
        await tg.start(hung.run)
        real = await WorkerPool(url, tg).start(delay_ms=20, name="real")
        async with AsyncClient(url) as client:
            with anyio.fail_after(60):
                await client.wait_for_workers(2)
                # One attempt each: a start timeout must not spend it.
                tasks = [await client.submit(f"task {i}", max_attempts=1) for i in range(20)]
                results = [await task.result() for task in tasks]
        tg.cancel_scope.cancel()
    assert all(r.status is TaskStatus.SUCCEEDED and r.worker == real.id for r in results)
    assert [r.result for r in results] == [f"echo: task {i}" for i in range(20)]
    assert hung.held and hung.most == 1
    delayed = {r.id: r for r in results if r.attempts}
    assert set(delayed) == hung.held
    for entry in delayed.values():
        assert {(a.reason, a.worker) for a in entry.attempts} == {("start_timeout", HUNG_ID)}
        assert entry.attempt == 1 + len(entry.attempts)


# -- invalid entries -----------------------------------------------------------------------


def deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


def write_malformed(board: BoardDoc, prefix: str) -> dict[str, dict[str, Any]]:
    """Entries no check would let through, as an older version might have left them on disk;
    returns, per task id, what its failed entry must keep."""
    todo = board.column_map(Column.TODO)
    prepared = board.column_map(Column.PREPARED)
    doing = board.column_map(Column.DOING)
    p = prefix
    todo[f"{p}deep"] = Map({"id": f"{p}deep", "messages": deep(1000), "owner": "alice", "created_at": 5.0})
    todo[f"{p}nan"] = Map({"id": f"{p}nan", "prompt": "x", "priority": math.nan, "owner": "bob"})
    todo[f"{p}when"] = Map({"id": f"{p}when", "prompt": "x", "created_at": "yesterday", "owner": {"x": 1}})
    todo[f"{p}huge"] = Map({"id": f"{p}huge", "prompt": "x", "attempt": 1e300})
    todo[f"{p}maybe"] = Map({"id": f"{p}maybe", "prompt": "x", "cancel": "maybe"})
    todo[f"{p}shared"] = Map({"id": f"{p}shared", "prompt": "x", "priority": Map({"a": 1})})
    todo[f"{p}plain"] = "not an entry"
    prepared[f"{p}typed"] = Map({"id": f"{p}typed", "prompt": "x", "worker": 42, "attempt": 1})
    doing[f"{p}ghost"] = Map({"id": f"{p}ghost", "prompt": "x", "worker": "ghost", "attempts": "none"})
    doing[f"{p}dark"] = Map({"id": f"{p}dark", "prompt": "x", "worker": "ghost", "context": deep(1000)})
    kept: dict[str, dict[str, Any]] = {
        f"{p}{name}": {} for name in ("nan", "when", "huge", "maybe", "shared", "plain", "typed", "ghost", "dark")
    }
    kept[f"{p}deep"] = {"owner": "alice", "created_at": 5.0}
    kept[f"{p}nan"] = {"owner": "bob"}
    kept[f"{p}when"] = {"owner": ""}
    return kept


async def failed_in_done(room: BoardRoom, expected: dict[str, dict[str, Any]]) -> None:
    """Wait until every task of `expected` is failed in `done` (and nowhere else), with a
    minimal entry keeping what `expected` says."""
    def settled() -> bool:
        board = room.board
        return all(
            task_id in board.column_map(Column.DONE)
            and not any(task_id in board.column_map(col) for col in (Column.TODO, Column.PREPARED, Column.DOING))
            for task_id in expected
        )

    while not settled():
        with anyio.move_on_after(0.5):
            await room.changed.wait()
    for task_id, kept in expected.items():
        entry = plain_fields(room.board.column_map(Column.DONE)[task_id])
        assert set(entry) <= MINIMAL, (task_id, entry)
        assert entry["status"] == "failed" and entry["error"]["code"] == "invalid_task", (task_id, entry)
        assert entry["id"] == task_id
        for name, value in kept.items():
            assert entry[name] == value, (task_id, name, entry)


@asynccontextmanager
async def server_and_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> AsyncIterator[tuple[str, Hub]]:
    """A real server, and its hub (for the room's document, in process)."""
    hubs: list[Hub] = []

    class RecordingHub(Hub):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            hubs.append(self)

    monkeypatch.setattr(runner, "Hub", RecordingHub)
    settings = Settings(port=0, data_dir=tmp_path, orphan_grace_s=0.5, **overrides)
    async with anyio.create_task_group() as tg:
        url = await tg.start(runner.serve, settings)
        yield url, hubs[0]
        tg.cancel_scope.cancel()


async def run_tasks(client: AsyncClient, label: str, count: int = 3) -> list[TaskEntry]:
    tasks = [await client.submit(f"{label} {i}") for i in range(count)]
    return [await task.result() for task in tasks]


def succeeded(results: list[TaskEntry], label: str) -> bool:
    return [(r.status, r.result) for r in results] == [
        (TaskStatus.SUCCEEDED, f"echo: {label} {i}") for i in range(len(results))
    ]


async def test_malformed_entries_fail_as_invalid_tasks_and_the_embedded_broker_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server_and_hub(tmp_path, monkeypatch) as (url, hub), anyio.create_task_group() as tg:
        await WorkerPool(url, tg).start(delay_ms=1)
        async with AsyncClient(url) as client:
            with anyio.fail_after(30):
                before = await run_tasks(client, "before")
                room = await hub.room(c.DEFAULT_BOARD)
                expected: dict[str, dict[str, Any]] = {}

                def write(board: BoardDoc) -> None:
                    expected.update(write_malformed(board, "bad-"))

                room.server_write(write)
                during = await run_tasks(client, "during")
                await failed_in_done(room, expected)
                after = await run_tasks(client, "after")
        broker = hub.broker(c.DEFAULT_BOARD)
        tg.cancel_scope.cancel()
    assert succeeded(before, "before") and succeeded(during, "during") and succeeded(after, "after")
    assert broker is not None and broker.stats.failed_passes == 0
    assert broker.stats.invalid == len(expected)


def log_file(path: Path) -> IO[bytes]:
    return path.open("wb")


async def test_a_standalone_broker_survives_malformed_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "broker.log"
    async with server_and_hub(tmp_path, monkeypatch, embedded_broker=False) as (url, hub):
        room = await hub.room(c.DEFAULT_BOARD)
        expected: dict[str, dict[str, Any]] = {}

        def write(prefix: str) -> Callable[[BoardDoc], None]:
            return lambda board: expected.update(write_malformed(board, prefix))

        room.server_write(write("old-"))  # there before the broker connects: in its first sync
        async with anyio.create_task_group() as tg:
            await WorkerPool(url, tg).start(delay_ms=1)
            with log_file(log_path) as log:
                broker = await anyio.open_process(
                    cli("broker", "--url", url), stdout=subprocess.DEVNULL, stderr=log,
                    env={**os.environ, "KANBANMESH_ORPHAN_GRACE_S": "0.5"},
                )
            try:
                async with AsyncClient(url) as client:
                    with anyio.fail_after(30):
                        before = await run_tasks(client, "before")
                        room.server_write(write("new-"))  # and arriving while it runs
                        during = await run_tasks(client, "during")
                        await failed_in_done(room, expected)
                        after = await run_tasks(client, "after")
                alive = broker.returncode is None
            finally:
                broker.kill()
                with anyio.fail_after(10):
                    await broker.wait()
            tg.cancel_scope.cancel()
    assert alive
    assert succeeded(before, "before") and succeeded(during, "during") and succeeded(after, "after")
    # Its writes were never refused (the server would have closed its connection).
    assert "starting over" not in log_path.read_text(errors="replace")
