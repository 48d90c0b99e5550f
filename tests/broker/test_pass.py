"""The broker's pass on a local document: start deadlines, probation, backoff, and entries it
cannot act on. No socket: a `BoardView` over a pycrdt `Doc`, presence set by the test, time
from a clock the test moves."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from pycrdt import Doc, Map

from broker import Broker, BrokerSettings
from broker.repair import MAX_START_TIMEOUT_RECORDS, START_TIMEOUT
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.board.reads import plain_fields, read_field
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.transitions import Column

pytestmark = pytest.mark.anyio

START_TIMEOUT_S = 10.0
RECONNECT_GRACE_S = 3.0
MINIMAL = {"id", "owner", "prompt", "created_at", "status", "result", "error", "finished_at"}


class LocalView:
    """A `BoardView` over a local document."""

    def __init__(self) -> None:
        self.board = BoardDoc(Doc())
        self.subject: str | None = None
        self.states: dict[int, dict[str, Any]] = {}
        self._presence_listeners: list[Callable[[], None]] = []

    def on_remote_change(self, listener: Callable[[], None]) -> None:
        pass  # the test makes the passes

    def on_presence_change(self, listener: Callable[[], None]) -> None:
        self._presence_listeners.append(listener)

    def on_reset(self, listener: Callable[[], None]) -> None:
        pass

    def presence(self) -> dict[int, dict[str, Any]]:
        return dict(self.states)

    def presence_ages(self) -> dict[int, float]:
        return {cid: 0.0 for cid in self.states}

    def publish(self, state: dict[str, Any]) -> None:
        pass

    def announce(self, worker_id: str, slots: int = 1) -> None:
        self.states[max(self.states, default=0) + 1] = {
            "role": "worker", "id": worker_id, "slots": slots, "state": "ready",
        }
        self._changed()

    def leave_all(self) -> None:
        self.states.clear()
        self._changed()

    def _changed(self) -> None:
        for listener in self._presence_listeners:
            listener()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def view() -> LocalView:
    return LocalView()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(view: LocalView, clock: Clock) -> Broker:
    settings = BrokerSettings(start_timeout_s=START_TIMEOUT_S, orphan_grace_s=0.0,
                              reconnect_grace_s=RECONNECT_GRACE_S)
    broker = Broker(view, settings, clock=clock)
    broker._tracker.attach()  # what `run` does first
    return broker


def submit(view: LocalView, *ids: str, **fields: Any) -> None:
    with view.board.doc.transaction():
        for i, task_id in enumerate(ids):
            view.board.column_map(Column.TODO)[task_id] = Map(
                {"id": task_id, "prompt": "p", "created_at": 1000.0 + i, **fields}
            )


def held_by(view: LocalView, worker: str, column: Column = Column.PREPARED) -> list[str]:
    return sorted(
        key for key, entry in view.board.entries(column)
        if isinstance(entry, Map) and read_field(entry, c.F_WORKER) == worker
    )


def start(view: LocalView, task_id: str) -> None:
    """What a worker writes when it starts a task."""
    view.board.move(task_id, Column.PREPARED, Column.DOING, PeerRole.WORKER, set_fields={"started_at": 1.0})


def fields(view: LocalView, column: Column, task_id: str) -> dict[str, Any]:
    return plain_fields(view.board.column_map(column)[task_id])


async def test_a_fake_worker_holds_one_task_until_its_deadline_then_waits_out_a_backoff(
    view: LocalView, clock: Clock, broker: Broker
) -> None:
    view.announce("fake", slots=1000)
    submit(view, *(f"t{i}" for i in range(5)), max_attempts=1)
    broker.run_pass()
    assert held_by(view, "fake") == ["t0"]  # probation: one, not a thousand
    clock.now += START_TIMEOUT_S - 0.1
    broker.run_pass()
    assert held_by(view, "fake") == ["t0"]
    clock.now += 0.2
    broker.run_pass()
    # Back in the queue, at once, not failed although max_attempts is 1; the worker that let
    # it wait gets nothing during its backoff.
    assert held_by(view, "fake") == []
    entry = fields(view, Column.TODO, "t0")
    assert entry["attempt"] == 2 and [a["reason"] for a in entry["attempts"]] == [START_TIMEOUT]
    assert entry["attempts"][0]["worker"] == "fake" and "worker" not in entry
    clock.now += broker.health.policy.backoff_s - 0.1
    broker.run_pass()
    assert held_by(view, "fake") == []
    clock.now += 0.2
    broker.run_pass()
    assert held_by(view, "fake") == ["t0"]  # probation again, the oldest task first
    assert broker.stats.start_timeouts == 1 and broker.stats.failed == 0


async def test_a_real_worker_proves_itself_by_starting_and_is_served_first(
    view: LocalView, clock: Clock, broker: Broker
) -> None:
    view.announce("zz-fake", slots=1000)
    view.announce("real", slots=3)
    submit(view, *(f"t{i}" for i in range(6)))
    broker.run_pass()
    # Both unproven: one each (ties go to the greater id).
    assert held_by(view, "zz-fake") == ["t0"] and held_by(view, "real") == ["t1"]
    start(view, "t1")
    broker.run_pass()
    assert held_by(view, "real") == ["t2", "t3"]  # proven: its free slots count in full
    for task_id in ("t2", "t3"):
        start(view, task_id)
    view.board.move("t1", Column.DOING, Column.DONE, PeerRole.WORKER, set_fields={"status": "succeeded"})
    broker.run_pass()
    assert held_by(view, "real") == ["t4"] and held_by(view, "zz-fake") == ["t0"]
    start(view, "t4")
    clock.now += START_TIMEOUT_S
    broker.run_pass()
    # The fake's task went back to the queue, where it waits for the real worker (its 3 slots
    # busy), not for the fake (in backoff); then it goes first, the oldest.
    assert held_by(view, "zz-fake") == [] and "t0" in view.board.column_map(Column.TODO)
    view.board.move("t2", Column.DOING, Column.DONE, PeerRole.WORKER, set_fields={"status": "succeeded"})
    broker.run_pass()
    assert held_by(view, "real") == ["t0"]


async def test_a_worker_answering_at_once_prepared_to_done_counts_as_a_start(
    view: LocalView, broker: Broker
) -> None:
    view.announce("fast", slots=4)
    submit(view, "a", "b", "c")
    broker.run_pass()
    assert held_by(view, "fast") == ["a"]
    view.board.move("a", Column.PREPARED, Column.DONE, PeerRole.WORKER,
                    set_fields={"status": "succeeded", "started_at": 1.0})
    broker.run_pass()
    assert held_by(view, "fast") == ["b", "c"]


async def test_a_cancel_by_the_broker_is_no_start(view: LocalView, broker: Broker) -> None:
    view.announce("w", slots=4)
    submit(view, "a", "b", "c")
    broker.run_pass()
    view.board.column_map(Column.PREPARED)["a"]["cancel"] = True
    broker.run_pass()  # the broker finishes it, cancelled: the worker proved nothing
    assert fields(view, Column.DONE, "a")["status"] == "cancelled"
    assert held_by(view, "w") == ["b"]


async def test_start_timeouts_never_fail_a_task_and_their_records_stay_bounded(
    view: LocalView, clock: Clock, broker: Broker
) -> None:
    submit(view, "t", max_attempts=1)
    for i in range(MAX_START_TIMEOUT_RECORDS + 5):
        view.announce(f"fake{i:02d}", slots=1000)  # a fresh identity each time
        broker.run_pass()
        assert held_by(view, f"fake{i:02d}") == ["t"]
        clock.now += START_TIMEOUT_S
        broker.run_pass()
    entry = fields(view, Column.TODO, "t")
    assert entry["attempt"] == MAX_START_TIMEOUT_RECORDS + 6
    assert len(entry["attempts"]) == MAX_START_TIMEOUT_RECORDS
    assert entry["attempts"][-1]["worker"] == f"fake{MAX_START_TIMEOUT_RECORDS + 4}"
    # A lost attempt that did start still counts: with max_attempts 1, it fails the task.
    view.leave_all()
    view.announce("real", slots=1)
    broker.run_pass()
    start(view, "t")
    view.leave_all()
    clock.now += RECONNECT_GRACE_S + 0.1  # it did not come back
    broker.run_pass()
    done = fields(view, Column.DONE, "t")
    assert done["status"] == "failed" and done["error"]["code"] == "worker_lost"


async def test_a_worker_back_within_the_reconnect_grace_keeps_its_task(
    view: LocalView, clock: Clock, broker: Broker
) -> None:
    """A worker whose write was refused starts over on a new connection at once: its tasks
    stay its own for `reconnect_grace_s`, and go back to the queue only if it stays away."""
    submit(view, "t")
    view.announce("w", slots=1)
    broker.run_pass()
    start(view, "t")
    view.leave_all()
    broker.run_pass()
    assert view.board.locate("t") is Column.DOING  # not requeued: it may be back
    clock.now += RECONNECT_GRACE_S / 2
    view.announce("w", slots=1)  # back, on a new connection (a new client id)
    broker.run_pass()
    clock.now += 10 * RECONNECT_GRACE_S
    broker.run_pass()
    assert view.board.locate("t") is Column.DOING and fields(view, Column.DOING, "t")["attempt"] == 1
    view.leave_all()
    clock.now += RECONNECT_GRACE_S + 0.1  # gone for good
    broker.run_pass()
    entry = fields(view, Column.TODO, "t")
    assert entry["attempt"] == 2 and entry["attempts"][-1]["reason"] == "worker_lost"


def deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


async def test_entries_the_broker_cannot_act_on_are_failed_and_the_rest_goes_on(
    view: LocalView, clock: Clock, broker: Broker
) -> None:
    view.announce("w", slots=100)
    submit(view, "ok1")
    broker.run_pass()
    start(view, "ok1")  # proven: every slot counts
    todo = view.board.column_map(Column.TODO)
    prepared = view.board.column_map(Column.PREPARED)
    doing = view.board.column_map(Column.DOING)
    bad: dict[str, dict[str, Any]] = {
        "deep": {"messages": deep(1000), "owner": "alice", "created_at": 5.0},
        "nan": {"priority": math.nan, "owner": "bob"},
        "when": {"created_at": "yesterday", "owner": {"x": 1}},
        "huge": {"attempt": 1e300},
        "maybe": {"cancel": "maybe"},
        "shared": {"priority": Map({"a": 1})},
    }
    with view.board.doc.transaction():
        for task_id, extra in bad.items():
            todo[task_id] = Map({"id": task_id, "prompt": "p", **extra})
        todo["plain"] = "not a map"
        todo["object"] = {"id": "object", "prompt": "p", "owner": "carol"}
        prepared["typed"] = Map({"id": "typed", "prompt": "p", "worker": 42})
        doing["ghost"] = Map({"id": "ghost", "prompt": "p", "worker": "ghost", "attempts": "none"})
        # Assigned to a present worker that never starts it, and unreadable: its requeue fails it.
        prepared["late"] = Map({"id": "late", "prompt": "p", "worker": "w", "context": deep(1000)})
    submit(view, "ok2", "ok3")
    broker.run_pass()
    clock.now += START_TIMEOUT_S
    broker.run_pass()
    done = view.board.column_map(Column.DONE)
    failed = {*bad, "plain", "object", "typed", "ghost", "late"}
    for task_id in failed:
        entry = fields(view, Column.DONE, task_id)
        assert set(entry) <= MINIMAL, task_id
        assert entry["status"] == "failed" and entry["error"]["code"] == "invalid_task", task_id
        assert all(task_id not in view.board.column_map(col) for col in (Column.TODO, Column.PREPARED, Column.DOING))
    assert fields(view, Column.DONE, "deep")["owner"] == "alice"
    assert fields(view, Column.DONE, "deep")["created_at"] == 5.0
    assert fields(view, Column.DONE, "object")["owner"] == "carol"
    assert fields(view, Column.DONE, "when")["owner"] == ""
    assert held_by(view, "w", Column.PREPARED) == []  # ok2, ok3 went out and timed out in turn
    assert broker.stats.invalid == len(failed) and broker.stats.failed_passes == 0
    assert {"ok2", "ok3"} <= set(view.board.ids(Column.TODO)) | set(done.keys()) | set(prepared.keys())


async def test_a_failing_pass_never_escapes_run_and_is_retried_after_a_growing_pause(
    view: LocalView, monkeypatch: pytest.MonkeyPatch
) -> None:
    class PanicException(BaseException):  # what pyo3 raises for a panic in Rust code
        pass

    broker = Broker(view, BrokerSettings(orphan_grace_s=0.0))
    calls: list[float] = []
    real_pass = broker.run_pass

    def failing_pass() -> None:
        calls.append(anyio.current_time())
        if len(calls) <= 4:
            raise PanicException("boom") if len(calls) % 2 else RuntimeError("boom")
        real_pass()

    monkeypatch.setattr(broker, "run_pass", failing_pass)
    view.announce("w", slots=1)
    submit(view, "t")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(broker.run)
            while "t" not in view.board.column_map(Column.PREPARED):
                view.announce("w", slots=1)  # presence changes wake the loop: no hot loop
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(calls)][:4]
    assert broker.stats.failed_passes == 4
    assert all(gap >= 0.09 * 2**i for i, gap in enumerate(gaps)), gaps


async def test_an_observer_that_fails_is_contained_and_the_indexes_rebuilt(
    view: LocalView, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    view.announce("w", slots=2)
    original = broker._tracker._enqueue

    def explode(task_id: str, entry: Any) -> None:
        raise RuntimeError("observer bug")

    monkeypatch.setattr(broker._tracker, "_enqueue", explode)
    submit(view, "t")  # the write itself goes through: the observer's failure is contained
    assert broker._tracker.broken
    monkeypatch.setattr(broker._tracker, "_enqueue", original)
    broker.run_pass()
    assert held_by(view, "w") == ["t"]
