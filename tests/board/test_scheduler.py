"""Assignment order and slot limits of the broker's scheduler."""

from __future__ import annotations

from awareness.states import WorkerPresence, WorkerState
from broker.scheduler import QueuedTask, TodoQueue, plan


def queue_of(*tasks: QueuedTask) -> TodoQueue:
    queue = TodoQueue()
    for task in tasks:
        queue.add(task)
    return queue


def test_priority_then_oldest_first() -> None:
    queue = queue_of(
        QueuedTask.make("old-low", "", 0, 1.0),
        QueuedTask.make("new-high", "", 5, 3.0),
        QueuedTask.make("newer-low", "", 0, 2.0),
    )
    w = WorkerPresence(id="w", slots=3)
    assert [t for t, _ in plan(queue, [w], {})] == ["new-high", "old-low", "newer-low"]


def test_slots_and_load_are_respected() -> None:
    queue = queue_of(*(QueuedTask.make(f"t{i}", "", 0, float(i)) for i in range(10)))
    a, b = WorkerPresence(id="a", slots=2), WorkerPresence(id="b", slots=3)
    assignments = plan(queue, [a, b], {"b": 1})
    per = {wid: sum(1 for _, w in assignments if w == wid) for wid in ("a", "b")}
    assert per == {"a": 2, "b": 2}


def test_model_must_match_and_draining_workers_get_nothing() -> None:
    queue = queue_of(QueuedTask.make("g", "gemma", 0, 1.0), QueuedTask.make("s", "smol", 0, 2.0))
    smol = WorkerPresence(id="s1", models=["smol"], slots=4)
    gemma = WorkerPresence(id="g1", models=["gemma"], slots=4, state=WorkerState.DRAINING)
    assert plan(queue, [smol, gemma], {}) == [("s", "s1")]


def test_queue_survives_partial_iteration_and_discards() -> None:
    queue = queue_of(*(QueuedTask.make(f"t{i}", "", 0, float(i)) for i in range(5)))
    queue.discard("t0")
    first = plan(queue, [WorkerPresence(id="w", slots=1)], {})
    assert first == [("t1", "w")]
    assert len(queue) == 4 and [t.id for t in queue.ordered()] == ["t1", "t2", "t3", "t4"]
