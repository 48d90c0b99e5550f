"""The pre-inference pipeline on a hub (rooms with their embedded brokers, no sockets): the
`enriching` marker keeps a task from being assigned until its middlewares are done; failures,
timeouts, cancels and restarts end the way docs/protocol.md says."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import now_ms
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import TaskRequest
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import MiddlewareError
from kanbanmesh.pipeline import FieldReader, Middleware, PendingTask
from kanbanmesh.server.archive import TaskArchive
from kanbanmesh.server.hub import Hub, HubSettings
from kanbanmesh.server.room import BoardRoom
from kanbanmesh.server.store import BoardStore

pytestmark = pytest.mark.anyio


class Gate:
    """Applies to tasks tagged with its name; waits for `release`, then writes `note`."""

    def __init__(self, name: str = "gate", *, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.release = anyio.Event()
        self.started = anyio.Event()
        self.calls = 0

    def applies(self, entry: FieldReader) -> bool:
        return entry.get("tag") == self.name

    async def enrich(self, task: PendingTask) -> dict[str, Any]:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise MiddlewareError("gate_closed", "the gate stayed shut")
        return {"note": f"{self.name} saw {task.question()}"}


@asynccontextmanager
async def hub_room(middlewares: Sequence[Middleware], store: BoardStore | None = None,
                   timeout_s: float = 30.0) -> AsyncIterator[BoardRoom]:
    async with TaskArchive(None) as archive, anyio.create_task_group() as tg:
        hub = Hub(store, archive, HubSettings(middleware_timeout_s=timeout_s), middlewares=middlewares)
        await tg.start(hub.start)
        room = await hub.room("b")
        # A worker with two free slots, as the embedded broker sees presence.
        room.publish_awareness(object(), 4242, {c.A_ROLE: "worker", c.A_ID: "w1", c.A_MODELS: ["m"],
                                                c.A_SLOTS: 2, c.A_STATE: "ready"})
        yield room
        tg.cancel_scope.cancel()


def submit(room: BoardRoom, task_id: str, **fields: Any) -> None:
    request = TaskRequest.model_validate({"id": task_id, "prompt": f"question {task_id}", **fields})
    room.server_write(lambda board: board.create(request), created=(task_id,))


async def until(room: BoardRoom, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not check():
            with anyio.move_on_after(0.2):
                await room.changed.wait()


def where(room: BoardRoom, task_id: str) -> tuple[Column | None, dict[str, Any]]:
    column = room.board.locate(task_id)
    if column is None:
        return None, {}
    return column, room.board.read(task_id)[1].model_dump(exclude_none=True)


async def test_a_task_no_middleware_applies_to_is_not_marked_and_goes_at_once() -> None:
    gate = Gate()
    async with hub_room([gate]) as room:
        submit(room, "plain")
        column, entry = where(room, "plain")
        assert column is Column.PREPARED and "enriching" not in entry and gate.calls == 0


async def test_a_task_waits_unassigned_until_its_middlewares_are_done() -> None:
    first, second = Gate("first"), Gate("second")
    async with hub_room([first, second]) as room:
        submit(room, "t1", tag="first")
        await first.started.wait()
        column, entry = where(room, "t1")
        assert column is Column.TODO and entry["enriching"] == ["first"]
        submit(room, "t2")  # a later task without middleware overtakes it
        assert where(room, "t2")[0] is Column.PREPARED
        assert where(room, "t1")[0] is Column.TODO
        # The worker starts it, as a real one would: proven, it gets its second slot's task too
        # (until a worker has started a task it holds one unstarted task at most, 4.3).
        room.server_write(lambda board: board.move(
            "t2", Column.PREPARED, Column.DOING, PeerRole.WORKER, set_fields={c.F_STARTED_AT: now_ms()}))
        first.release.set()
        await until(room, lambda: where(room, "t1")[0] is Column.PREPARED)
        column, entry = where(room, "t1")
        assert entry["note"] == "first saw question t1" and "enriching" not in entry
        assert entry["worker"] == "w1" and second.calls == 0


async def test_a_failing_middleware_fails_the_task_with_its_code() -> None:
    gate = Gate(fail=True)
    async with hub_room([gate]) as room:
        submit(room, "t", tag="gate")
        gate.release.set()
        await until(room, lambda: where(room, "t")[0] is Column.DONE)
        entry = where(room, "t")[1]
        assert entry["status"] == "failed" and entry["error"]["code"] == "gate_closed"
        assert "gate: the gate stayed shut" in entry["error"]["message"] and "enriching" not in entry


async def test_a_middleware_past_its_timeout_fails_the_task() -> None:
    async with hub_room([Gate()], timeout_s=0.3) as room:
        submit(room, "t", tag="gate")
        await until(room, lambda: where(room, "t")[0] is Column.DONE)
        assert where(room, "t")[1]["error"]["code"] == "middleware_timeout"


async def test_a_task_cancelled_while_enriching_ends_cancelled_and_keeps_no_result() -> None:
    gate = Gate()
    async with hub_room([gate]) as room:
        submit(room, "t", tag="gate")
        await gate.started.wait()
        room.server_write(lambda board: board.entry("t")[1].__setitem__(c.F_CANCEL, True))
        await until(room, lambda: where(room, "t")[0] is Column.DONE)
        gate.release.set()
        await anyio.wait_all_tasks_blocked()
        column, entry = where(room, "t")
        assert column is Column.DONE and entry["status"] == "cancelled"
        assert "note" not in entry and "enriching" not in entry


async def test_a_restart_mid_pipeline_runs_the_middlewares_again(tmp_path: Path) -> None:
    async with BoardStore(tmp_path / "boards.sqlite3") as store:
        gate = Gate()
        async with hub_room([gate], store) as room:
            submit(room, "t", tag="gate")
            await gate.started.wait()
            assert where(room, "t")[1]["enriching"] == ["gate"]
            await store.flush()
    async with BoardStore(tmp_path / "boards.sqlite3") as store:
        again = Gate()
        again.release.set()
        async with hub_room([again], store) as room:
            await until(room, lambda: where(room, "t")[0] is Column.PREPARED)
            assert where(room, "t")[1]["note"] == "gate saw question t" and again.calls == 1
