"""Assignment order and slot limits of the broker's scheduler."""

from __future__ import annotations

from awareness.states import MAX_KINDS, WorkerPresence, WorkerState, workers_from_states
from broker.scheduler import QueuedTask, TodoQueue, plan
from kanbanmesh.board.schema import TaskKind


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


def test_a_worker_on_probation_gets_at_most_its_limit_whatever_slots_it_announces() -> None:
    queue = queue_of(*(QueuedTask.make(f"t{i}", "", 0, float(i)) for i in range(10)))
    fake = WorkerPresence(id="fake", slots=1000)
    assert plan(queue, [fake], {}, limits={"fake": 1}) == [("t0", "fake")]
    assert plan(queue, [fake], {"fake": 1}, limits={"fake": 0}) == []


def test_trusted_workers_are_served_before_workers_on_probation() -> None:
    queue = queue_of(*(QueuedTask.make(f"t{i}", "", 0, float(i)) for i in range(4)))
    # The untrusted one announces far more free slots and the greater id: it still comes last.
    fake = WorkerPresence(id="zz-fake", slots=1000)
    real = WorkerPresence(id="real", slots=2)
    assignments = plan(queue, [fake, real], {}, limits={"zz-fake": 1})
    assert assignments == [("t0", "real"), ("t1", "real"), ("t2", "zz-fake")]


def test_among_workers_on_probation_the_usual_order_holds() -> None:
    queue = queue_of(QueuedTask.make("t0", "", 0, 0.0), QueuedTask.make("t1", "", 0, 1.0))
    a, b = WorkerPresence(id="a", slots=1), WorkerPresence(id="b", slots=1)
    assert plan(queue, [a, b], {}, limits={"a": 1, "b": 1}) == [("t0", "b"), ("t1", "a")]


def test_a_worker_in_backoff_gets_nothing_even_when_nobody_else_can_take_it() -> None:
    queue = queue_of(QueuedTask.make("t0", "", 0, 0.0))
    w = WorkerPresence(id="w", slots=4)
    assert plan(queue, [w], {}, limits={"w": 0}) == []


def test_kinds_must_match_and_an_unserved_kind_waits() -> None:
    """A chat never goes to an embedding worker, nor an embed task to a chat worker (one that
    announces no `kinds` runs chats); a task no worker can take waits, the others pass it."""

    def embed(task_id: str, model: str, at: float) -> QueuedTask:
        return QueuedTask.make(task_id, model, 0, at, kind=TaskKind.EMBED)

    queue = queue_of(
        embed("e-unserved", "other-embedder", 0.5), QueuedTask.make("c1", "", 0, 1.0),
        embed("e1", "", 2.0), QueuedTask.make("c2", "", 0, 3.0), embed("e2", "minilm", 4.0),
    )
    chatter = WorkerPresence(id="chat", models=["smol"], slots=4)
    embedder = WorkerPresence.model_validate({"id": "emb", "models": ["minilm"], "slots": 4, "kinds": ["embed"]})
    assignments = dict(plan(queue, [chatter, embedder], {}))
    assert assignments == {"c1": "chat", "c2": "chat", "e1": "emb", "e2": "emb"}
    assert plan(queue_of(embed("e", "", 1.0)), [chatter], {}) == []
    assert plan(queue_of(QueuedTask.make("c", "", 0, 1.0)), [embedder], {}) == []


def test_a_worker_announcing_too_many_or_odd_kinds() -> None:

    states = {
        1: {"role": "worker", "id": "many", "kinds": ["embed"] * (MAX_KINDS + 1)},
        2: {"role": "worker", "id": "odd", "kinds": ["vision"]},
        3: {"role": "worker", "id": "typed", "kinds": "embed"},
    }
    workers = {w.id: w for w in workers_from_states(states)}
    assert set(workers) == {"odd"}  # out of bounds: ignored, as any invalid state
    queue = queue_of(QueuedTask.make("c", "", 0, 1.0))
    assert plan(queue, list(workers.values()), {}) == []  # a kind it does not know draws nothing
