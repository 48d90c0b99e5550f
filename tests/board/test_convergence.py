"""Replicas of one board converge whatever the interleaving of writers and deliveries.

Pycrdt documents stand for the peers of a board: replica 0 is the server (with the embedded
broker), the others are connected to it (standalone brokers, workers, clients), as in the real
mesh. Each replica writes what a role may write when its own view allows it: the client
creates and cancels, a broker assigns, requeues and finishes cancelled tasks, a worker starts,
streams and finishes. Each link carries updates in order (a websocket) but is drained at random
moments, a few updates at a time; the server relays what it applies to every other peer; a peer
may reconnect, dropping whatever was in flight both ways and catching up through the two sync
steps. Every replica keeps a `BoardTracker`, the broker's index, and may run the broker's dedupe.

After everything has been delivered and the server's broker has dropped the duplicates its
tracker flagged, every replica must hold the same board, every task must sit in exactly one
column, and no task ever seen in `done` may have left it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Text, TransactionEvent

from broker.repair import RetryPolicy, drop_duplicates, finish, requeue_or_fail
from broker.tracker import BoardTracker
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, now_ms
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import TaskRequest, TaskStatus
from kanbanmesh.board.transitions import Column
from tests.support.ledger import DoneLedger

TASKS = ("t0", "t1", "t2")
WORKERS = ("worker-a", "worker-b")
POLICY = RetryPolicy(max_attempts=3)
HUB = 0  # the server's replica

# One operation: (kind, replica or peer, argument...); see the `op_*` methods.
Op = tuple[Any, ...]


@dataclass
class Replica:
    """One copy of the board, with the broker's index of it and its link to the server."""

    index: int
    doc: Doc[Any]
    board: BoardDoc
    tracker: BoardTracker
    up: list[bytes] = field(default_factory=list)  # sent to the server, not arrived yet
    down: list[bytes] = field(default_factory=list)  # relayed by the server, not arrived yet
    receiving: bool = False
    seen_done: set[str] = field(default_factory=set)


class Mesh:
    """A server replica, peers linked to it, and the operations on them. A writer's op is a
    no-op where the acting replica's view does not allow it, as real writers check first."""

    def __init__(self, replicas: int) -> None:
        self.replicas: list[Replica] = []
        for index in range(replicas):
            doc: Doc[Any] = Doc(client_id=index + 1)  # fixed ids: reproducible conflict winners
            board = BoardDoc(doc)
            tracker = BoardTracker(board)
            tracker.attach()
            replica = Replica(index, doc, board, tracker)
            doc.observe(lambda event, r=replica: self._on_update(r, event))
            self.replicas.append(replica)
        self.created: set[str] = set()
        self.ever_done: set[str] = set()
        self._sender: Replica | None = None  # the peer whose update the server is applying

    @property
    def hub(self) -> Replica:
        return self.replicas[HUB]

    def _on_update(self, replica: Replica, event: TransactionEvent) -> None:
        if replica is self.hub:  # the server relays what it applies, never back to the sender
            for peer in self.replicas[1:]:
                if peer is not self._sender:
                    peer.down.append(event.update)
        elif not replica.receiving:
            replica.up.append(event.update)

    # -- transport -----------------------------------------------------------------------

    def _receive(self, replica: Replica, update: bytes, sender: Replica | None = None) -> None:
        replica.receiving, self._sender = True, sender
        try:
            replica.doc.apply_update(update)
        finally:
            replica.receiving, self._sender = False, None

    def op_up(self, p: int, count: int) -> None:
        """The server receives the next `count` updates peer `p` sent."""
        peer = self._peer(p)
        for _ in range(min(count, len(peer.up))):
            self._receive(self.hub, peer.up.pop(0), sender=peer)

    def op_down(self, p: int, count: int) -> None:
        """Peer `p` receives the next `count` updates the server relayed to it."""
        peer = self._peer(p)
        for _ in range(min(count, len(peer.down))):
            self._receive(peer, peer.down.pop(0))

    def op_reconnect(self, p: int) -> None:
        """Peer `p`'s connection drops with messages in flight both ways; on the new one
        each side sends what the other lacks by its state vector (sync steps 1 and 2)."""
        peer = self._peer(p)
        peer.up.clear()
        peer.down.clear()
        self._receive(self.hub, peer.doc.get_update(self.hub.doc.get_state()), sender=peer)
        self._receive(peer, self.hub.doc.get_update(peer.doc.get_state()))

    def _peer(self, p: int) -> Replica:
        return self.replicas[1 + p % (len(self.replicas) - 1)]

    def exchange_all(self) -> None:
        while any(peer.up or peer.down for peer in self.replicas[1:]):
            for peer in self.replicas[1:]:
                self.op_up(peer.index - 1, len(peer.up))
                self.op_down(peer.index - 1, len(peer.down))
        states = {bytes(replica.doc.get_state()) for replica in self.replicas}
        assert len(states) == 1, "links drained, yet the replicas' state vectors differ"

    # -- writers -------------------------------------------------------------------------

    def run(self, op: Op) -> None:
        kind, *args = op
        getattr(self, f"op_{kind}")(*args)
        self._note_done()

    def op_create(self, r: int, t: int) -> None:  # client
        task_id = TASKS[t]
        if task_id not in self.created:  # a client writes a task once, on its own replica
            self.created.add(task_id)
            self.replicas[r].board.create(TaskRequest(id=task_id, prompt=f"prompt {task_id}"))

    def op_cancel(self, r: int, pick: int) -> None:  # client
        found = self._pick(r, pick, (Column.TODO, Column.PREPARED, Column.DOING))
        if found is not None:
            found[2][c.F_CANCEL] = True

    def op_assign(self, r: int, pick: int, w: int) -> None:  # broker (any replica may lead)
        found = self._pick(r, pick, (Column.TODO,))
        if found is not None and found[0] not in self.replicas[r].board.column_map(Column.DONE):
            task_id, _, entry = found  # (the broker skips a queued copy of a finished task)
            self.replicas[r].board.move(
                task_id, Column.TODO, Column.PREPARED, PeerRole.BROKER,
                set_fields={c.F_WORKER: WORKERS[w], c.F_ATTEMPT: int(entry.get(c.F_ATTEMPT) or 1),
                            c.F_ASSIGNED_AT: now_ms()},
            )

    def op_requeue(self, r: int, pick: int) -> None:  # broker: the worker's lease ran out
        found = self._pick(r, pick, (Column.PREPARED, Column.DOING))
        if found is not None:
            requeue_or_fail(self.replicas[r].board, *found, "lease_expired", "no heartbeat", POLICY)

    def op_broker_cancel(self, r: int, pick: int) -> None:  # broker: cancelled before start
        found = self._pick(r, pick, (Column.TODO, Column.PREPARED), cancelled=True)
        if found is not None:
            finish(self.replicas[r].board, found[0], found[1], TaskStatus.CANCELLED, None)

    def op_start(self, r: int, pick: int) -> None:  # worker
        found = self._pick(r, pick, (Column.PREPARED,))
        if found is not None:
            self.replicas[r].board.move(found[0], Column.PREPARED, Column.DOING, PeerRole.WORKER,
                                        set_fields={c.F_STARTED_AT: now_ms()}, new_output=True)

    def op_append(self, r: int, pick: int, chunk: str) -> None:  # worker
        found = self._pick(r, pick, (Column.DOING,))
        if found is not None and not found[2].get(c.F_CANCEL):
            output = found[2][c.F_OUTPUT]
            output += chunk  # the Text itself: `entry["output"] += x` would replace it

    def op_finish(self, r: int, pick: int) -> None:  # worker
        found = self._pick(r, pick, (Column.DOING,))
        if found is not None:
            task_id, _, entry = found
            status = TaskStatus.CANCELLED if entry.get(c.F_CANCEL) else TaskStatus.SUCCEEDED
            self.replicas[r].board.move(
                task_id, Column.DOING, Column.DONE, PeerRole.WORKER,
                set_fields={c.F_STATUS: status.value, c.F_RESULT: str(entry[c.F_OUTPUT]),
                            c.F_FINISHED_AT: now_ms()},
            )

    def op_dedupe(self, r: int) -> None:  # a broker's pass, as Broker._deduplicate makes it
        replica = self.replicas[r]
        suspects, replica.tracker.suspects = replica.tracker.suspects, set()
        with replica.doc.transaction():
            for task_id in suspects:
                drop_duplicates(replica.board, task_id)

    def _pick(
        self, r: int, pick: int, where: tuple[Column, ...], *, cancelled: bool = False
    ) -> tuple[str, Column, Map[Any]] | None:
        """One of replica `r`'s entries in `where`, chosen by `pick` (any copy: a writer
        looks at its column, not at the winner of a duplicate); None when there is none."""
        found = [
            (task_id, column, entry)
            for column in where
            for task_id, entry in sorted(self.replicas[r].board.entries(column), key=lambda kv: kv[0])
            if not cancelled or entry.get(c.F_CANCEL)
        ]
        return found[pick % len(found)] if found else None

    def _note_done(self) -> None:
        for replica in self.replicas:
            done = set(replica.board.ids(Column.DONE))
            assert replica.seen_done <= done, f"replica {replica.index} reopened {replica.seen_done - done}"
            replica.seen_done = done
            self.ever_done |= done

    # -- the end -------------------------------------------------------------------------

    def settle(self) -> None:
        """Deliver everything, let the server's broker dedupe, deliver again."""
        self.exchange_all()
        for replica in self.replicas:
            for task_id in task_ids(replica.board):
                assert set(replica.tracker.columns_of(task_id)) == set(columns(replica.board, task_id)), (
                    f"replica {replica.index}'s tracker lost track of {task_id}"
                )
        spread = {t for t in task_ids(self.hub.board) if len(columns(self.hub.board, t)) > 1}
        assert spread <= self.hub.tracker.suspects, f"duplicates the broker never noticed: {spread}"
        self.op_dedupe(HUB)
        self.exchange_all()
        self._note_done()

    def check_converged(self) -> None:
        boards = [snapshot(replica.board) for replica in self.replicas]
        assert all(board == boards[0] for board in boards), "replicas differ after a full exchange"
        board = self.hub.board
        for task_id in task_ids(board):
            assert len(columns(board, task_id)) == 1, f"{task_id} in {columns(board, task_id)}"
        assert self.ever_done <= set(board.ids(Column.DONE)), "a finished task was reopened"
        for task_id, entry in board.entries(Column.DONE):
            output = entry.get(c.F_OUTPUT)
            # Invariant 4: the result is the text of the attempt that finished.
            assert entry.get(c.F_RESULT) == (str(output) if isinstance(output, Text) else ""), task_id


def task_ids(board: BoardDoc) -> set[str]:
    return {task_id for column in Column for task_id in board.ids(column)}


def columns(board: BoardDoc, task_id: str) -> list[Column]:
    return [column for column in Column if task_id in board.column_map(column)]


def snapshot(board: BoardDoc) -> str:
    return json.dumps({col.value: board.column_map(col).to_py() for col in Column}, sort_keys=True)


def op_strategy(replicas: int) -> st.SearchStrategy[Op]:
    r = st.integers(0, replicas - 1)
    p = st.integers(0, replicas - 2)  # a peer (not the server)
    pick = st.integers(0, 3)
    count = st.integers(1, 4)
    return st.one_of(
        st.tuples(st.just("cancel"), r, pick),
        st.tuples(st.just("assign"), r, pick, st.integers(0, len(WORKERS) - 1)),
        st.tuples(st.just("requeue"), r, pick),
        st.tuples(st.just("broker_cancel"), r, pick),
        st.tuples(st.just("start"), r, pick),
        st.tuples(st.just("append"), r, pick, st.sampled_from(["a", "bc ", "déf "])),
        st.tuples(st.just("finish"), r, pick),
        st.tuples(st.just("dedupe"), r),
        st.tuples(st.just("up"), p, count),
        st.tuples(st.just("down"), p, count),
        st.tuples(st.just("reconnect"), p),
    )


@st.composite
def scenarios(draw: st.DrawFn, max_ops: int = 60) -> tuple[int, list[Op]]:
    replicas = draw(st.integers(2, 4))
    # Every task exists somewhere first, so that the rest of the ops have something to do.
    creates = [("create", draw(st.integers(0, replicas - 1)), t) for t in range(len(TASKS))]
    return replicas, creates + draw(st.lists(op_strategy(replicas), min_size=max_ops // 3, max_size=max_ops))


def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def converges(scenario: tuple[int, list[Op]]) -> None:
    replicas, ops = scenario
    mesh = Mesh(replicas)
    for op in ops:
        mesh.run(op)
    mesh.settle()
    mesh.check_converged()


@examples(200)
@given(scenarios())
def test_replicas_converge_with_each_task_in_one_column_and_done_kept(
    scenario: tuple[int, list[Op]],
) -> None:
    converges(scenario)


@examples(25)
@given(scenarios(max_ops=300))
def test_long_interleavings_converge(scenario: tuple[int, list[Op]]) -> None:
    converges(scenario)


# -- the classic races, spelled out ------------------------------------------------------

BROKER, WORKER = HUB, 1  # the server's embedded broker; a worker on the first peer
TO_WORKER = FROM_WORKER = 0  # the first peer's link


def assigned_and_streaming() -> Mesh:
    """t0 created and assigned to worker-a by the server's broker, started and streamed by
    the worker; both replicas in sync."""
    mesh = Mesh(2)
    for op in [("create", BROKER, 0), ("assign", BROKER, 0, 0), ("down", TO_WORKER, 9),
               ("start", WORKER, 0), ("append", WORKER, 0, "hello "), ("up", FROM_WORKER, 9)]:
        mesh.run(op)
    return mesh


def test_requeue_racing_a_late_finish_keeps_the_finished_attempt() -> None:
    mesh = assigned_and_streaming()
    mesh.run(("requeue", BROKER, 0))  # the lease ran out: back to todo as attempt 2
    mesh.run(("append", WORKER, 0, "world"))  # the worker, unaware, finishes attempt 1
    mesh.run(("finish", WORKER, 0))
    mesh.exchange_all()
    assert columns(mesh.hub.board, "t0") == [Column.TODO, Column.DONE]
    assert "t0" in mesh.hub.tracker.suspects
    mesh.settle()
    mesh.check_converged()
    entry = mesh.hub.board.column_map(Column.DONE)["t0"]
    assert entry[c.F_ATTEMPT] == 1 and entry[c.F_WORKER] == "worker-a"
    assert entry[c.F_STATUS] == "succeeded" and entry[c.F_RESULT] == "hello world"


def test_late_finish_beats_a_requeued_attempt_already_running_elsewhere() -> None:
    mesh = assigned_and_streaming()
    # The broker requeues and reassigns to worker-b, which starts attempt 2 (written on the
    # server's replica, standing in for worker-b's) while worker-a finishes attempt 1.
    for op in [("requeue", BROKER, 0), ("assign", BROKER, 0, 1), ("start", BROKER, 0),
               ("append", BROKER, 0, "hel"), ("append", WORKER, 0, "world"), ("finish", WORKER, 0)]:
        mesh.run(op)
    mesh.settle()
    mesh.check_converged()
    board = mesh.replicas[WORKER].board
    assert columns(board, "t0") == [Column.DONE]
    assert board.column_map(Column.DONE)["t0"][c.F_RESULT] == "hello world"


def test_two_brokers_assigning_the_same_task_leave_one_copy() -> None:
    mesh = Mesh(3)  # the server and two standalone brokers, each sure it leads
    first, second = 1, 2
    mesh.run(("create", HUB, 0))
    mesh.exchange_all()
    mesh.run(("assign", first, 0, 0))
    mesh.run(("assign", second, 0, 1))
    mesh.exchange_all()
    # Both wrote prepared["t0"]: one write wins the key, no duplicate to drop.
    assert [columns(r.board, "t0") for r in mesh.replicas] == [[Column.PREPARED]] * 3
    assigned = {r.board.column_map(Column.PREPARED)["t0"][c.F_WORKER] for r in mesh.replicas}
    assert len(assigned) == 1
    mesh.settle()
    mesh.check_converged()


def test_two_brokers_assigning_while_the_first_worker_starts_keeps_the_started_copy() -> None:
    mesh = Mesh(3)
    first, second = 1, 2  # the first peer also runs worker-a
    mesh.run(("create", HUB, 0))
    mesh.exchange_all()
    for op in [("assign", first, 0, 0), ("start", first, 0), ("assign", second, 0, 1)]:
        mesh.run(op)
    mesh.exchange_all()
    assert columns(mesh.hub.board, "t0") == [Column.PREPARED, Column.DOING]
    mesh.settle()
    mesh.check_converged()
    board = mesh.replicas[second].board
    assert columns(board, "t0") == [Column.DOING]  # equal attempts: the later column wins
    assert board.column_map(Column.DOING)["t0"][c.F_WORKER] == "worker-a"


def test_the_done_ledger_sees_a_late_finish_written_over_a_newer_attempt() -> None:
    mesh = assigned_and_streaming()
    ledger = DoneLedger(mesh.hub.board)
    # The broker requeues; worker-b (written on the server's replica) runs attempt 2 to the end.
    for op in [("requeue", BROKER, 0), ("assign", BROKER, 0, 1), ("start", BROKER, 0),
               ("append", BROKER, 0, "hello world"), ("finish", BROKER, 0)]:
        mesh.run(op)
    assert [f.attempt for f in ledger.finishes["t0"]] == [2]
    mesh.run(("finish", WORKER, 0))  # worker-a, cut off meanwhile, finishes attempt 1 too
    mesh.settle()
    mesh.check_converged()
    # Both finishes wrote done["t0"]; the later client id wins the key: worker-a's replica.
    assert [(f.attempt, f.worker) for f in ledger.doubled()["t0"]] == [(2, "worker-b"), (1, "worker-a")]
