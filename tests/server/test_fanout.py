"""Fan-out of a room: who gets an update at once, who gets it with the next batch.

A peer gets at once the updates about the tasks it follows: a client the tasks it created
(except their assignment, which is the worker's news), a worker the tasks assigned to it.
A broker gets everything at once. Everything else waits up to `lazy_s` and then arrives
merged with whatever else is pending. Nothing is ever dropped.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pycrdt import Doc, Map, Text

from kanbanmesh.board import constants as c
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import ConnectionClosedError
from kanbanmesh.protocol import codec
from kanbanmesh.server.archive import TaskArchive
from kanbanmesh.server.connection import Connection, SendBatch
from kanbanmesh.server.room import BoardRoom, RoomSettings

pytestmark = pytest.mark.anyio

LAZY_S = 0.5  # long enough that "at once" and "with the batch" cannot be confused
WORKER_LAZY_S = 1.0  # a worker's batches: other tasks' news only keeps its replica whole


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def archive() -> AsyncIterator[TaskArchive]:
    """An archive in memory, for a room."""
    async with TaskArchive(None) as archive:
        yield archive


class MemoryChannel:
    """A `Channel` whose two ends are memory streams: what the room sends, the test reads."""

    def __init__(self) -> None:
        self.to_room: MemoryObjectSendStream[bytes]
        self._from_test: MemoryObjectReceiveStream[bytes]
        self.to_room, self._from_test = anyio.create_memory_object_stream[bytes](math.inf)
        self._to_test: MemoryObjectSendStream[tuple[float, bytes]]
        self.sent: MemoryObjectReceiveStream[tuple[float, bytes]]
        self._to_test, self.sent = anyio.create_memory_object_stream[tuple[float, bytes]](math.inf)

    @property
    def path(self) -> str:
        return "/test"

    async def send(self, message: bytes) -> bool:
        await self._to_test.send((anyio.current_time(), message))
        return True

    async def recv(self) -> bytes:
        try:
            return await self._from_test.receive()
        except anyio.EndOfStream as exc:
            raise ConnectionClosedError("closed") from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.to_room.close()

    def dispose(self) -> None:
        for stream in (self.to_room, self._from_test, self._to_test, self.sent):
            stream.close()


class DirectMemoryChannel(MemoryChannel):
    """A `MemoryChannel` that also writes at once (`DirectSend`), as the server's direct
    websocket path does; `writable` False stands for a peer that reads slowly."""

    def __init__(self) -> None:
        super().__init__()
        self.writable = True
        self.sent_now = 0

    def send_now(self, message: bytes) -> bool:
        self._to_test.send_nowait((anyio.current_time(), message))
        self.sent_now += 1
        return True


CHANNELS = pytest.mark.parametrize("channel_kind", [MemoryChannel, DirectMemoryChannel])


class Peer:
    """A test peer: a document and the channel it talks to the room through."""

    def __init__(self, channel_kind: type[MemoryChannel] = MemoryChannel) -> None:
        self.doc: Doc[Any] = Doc()
        self.channel = channel_kind()
        self._updates: list[bytes] = []
        self.doc.observe(lambda event: self._updates.append(event.update))

    async def push(self) -> None:
        """Send what this peer wrote since the last push."""
        for update in self._updates:
            await self.channel.to_room.send(codec.sync_update(update))
        self._updates.clear()

    async def announce(self, state: dict[str, Any]) -> None:
        entry = codec.AwarenessEntry(self.doc.client_id, 1, state)
        await self.channel.to_room.send(codec.awareness_message(codec.encode_awareness([entry])))

    async def next_update(self, timeout_s: float) -> float:
        """Apply the next document update the room sends; returns when it was sent."""
        with anyio.fail_after(timeout_s):
            while True:
                at, data = await self.channel.sent.receive()
                message = codec.parse_message(data)
                if (
                    isinstance(message, codec.SyncMessage)
                    and message.step is not codec.SyncStep.STEP1
                    and message.payload != codec.EMPTY_UPDATE
                ):
                    self.doc.apply_update(message.payload)
                    return at

    def column(self, name: str) -> Map[Any]:
        return self.doc.get(name, type=Map)


def task_fields(task_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "owner": "", "model": "", "prompt": "hi", "params": {}, "priority": 0,
            "created_at": 1.0, "attempt": 1, **extra}


async def _join(tg: TaskGroup, room: BoardRoom, peers: Iterable[Peer]) -> None:
    """Start `room` and serve each of `peers` in it."""
    await tg.start(room.start)
    for peer in peers:
        tg.start_soon(room.serve, peer.channel)


async def _until_present(room: BoardRoom, count: int) -> None:
    """Wait until `count` awareness states reached the room."""
    with anyio.fail_after(5):
        while len(room.awareness.states()) < count:
            await anyio.sleep(0.01)


def _source() -> tuple[Map[Any], list[bytes]]:
    """A document's `todo` map to write into, and the list its updates are appended to."""
    source: Doc[Any] = Doc()
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    return source.get("todo", type=Map), updates


def _todo_of(data: bytes, *earlier: bytes) -> dict[str, Any]:
    """The `todo` map of a replica given `earlier` updates and then the sync message `data`."""
    message = codec.parse_message(data)
    assert isinstance(message, codec.SyncMessage)
    replica: Doc[Any] = Doc()
    for update in earlier:
        replica.apply_update(update)
    replica.apply_update(message.payload)
    todo: dict[str, Any] = replica.get("todo", type=Map).to_py()
    return todo


@CHANNELS
async def test_lazy_update_waits_for_its_deadline_and_urgent_one_takes_it_along(
    channel_kind: type[MemoryChannel],
) -> None:
    channel = channel_kind()
    conn = Connection(channel, keepalive_s=30, lazy_s=LAZY_S)
    try:
        await _run_lazy_scenario(channel, conn)
    finally:
        channel.dispose()


async def _run_lazy_scenario(channel: MemoryChannel, conn: Connection) -> None:
    tasks, updates = _source()
    async with anyio.create_task_group() as tg:
        tg.start_soon(conn.run_sender)
        start = anyio.current_time()
        tasks["a"] = "lazy"
        conn.enqueue_update(updates[-1], urgent=False)
        at, _ = await channel.sent.receive()
        assert at - start >= LAZY_S * 0.9, "a lazy update left before its deadline"

        tasks["b"] = "lazy"
        conn.enqueue_update(updates[-1], urgent=False)
        tasks["c"] = "urgent"
        start = anyio.current_time()
        conn.enqueue_update(updates[-1], urgent=True)
        at, data = await channel.sent.receive()
        assert at - start < LAZY_S / 2, "an urgent update waited"
        assert _todo_of(data, updates[0]) == {"a": "lazy", "b": "lazy", "c": "urgent"}
        tg.cancel_scope.cancel()


@CHANNELS
async def test_each_peer_gets_at_once_only_the_news_of_its_own_tasks(
    channel_kind: type[MemoryChannel], archive: TaskArchive
) -> None:
    room = BoardRoom("test", None, archive, RoomSettings(lazy_s=LAZY_S, worker_lazy_s=WORKER_LAZY_S))
    peers = client, broker, worker, other_worker = [Peer(channel_kind) for _ in range(4)]
    try:
        await _run_ownership_scenario(room, client, broker, worker, other_worker)
    finally:
        for peer in peers:
            peer.channel.dispose()


async def _run_ownership_scenario(
    room: BoardRoom, client: Peer, broker: Peer, worker: Peer, other_worker: Peer
) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(room.start)
        for peer in (client, broker, worker, other_worker):
            tg.start_soon(room.serve, peer.channel)
        await client.announce({c.A_ROLE: "client", c.A_ID: "c1"})
        await broker.announce({c.A_ROLE: "broker", c.A_ID: "b1"})
        await worker.announce({c.A_ROLE: "worker", c.A_ID: "w1", c.A_SLOTS: 1})
        await other_worker.announce({c.A_ROLE: "worker", c.A_ID: "w2", c.A_SLOTS: 1})
        with anyio.fail_after(5):
            while len(room.awareness.states()) < 4:
                await anyio.sleep(0.01)

        # A new task: a broker wants it at once, workers get it with their (longer) batch.
        start = anyio.current_time()
        client.column(c.TODO)["t1"] = Map(task_fields("t1"))
        await client.push()
        assert await broker.next_update(5) - start < LAZY_S / 2
        assert await worker.next_update(5) - start >= WORKER_LAZY_S * 0.9
        assert "t1" in worker.column(c.TODO)
        await other_worker.next_update(5)

        # Its assignment to w1: news for w1 at once; w2 and the owner get it batched.
        start = anyio.current_time()
        with broker.doc.transaction():
            del broker.column(c.TODO)["t1"]
            broker.column(c.PREPARED)["t1"] = Map(task_fields("t1", worker="w1"))
        await broker.push()
        assert await worker.next_update(5) - start < LAZY_S / 2
        assert worker.column(c.PREPARED)["t1"]["worker"] == "w1"
        # A person's page shows other tasks: its batches stay short; a worker's are longer.
        assert LAZY_S * 0.9 <= await client.next_update(5) - start < WORKER_LAZY_S * 0.9
        assert await other_worker.next_update(5) - start >= WORKER_LAZY_S * 0.9

        # w1 starts it and streams: the owner sees every piece at once.
        output = Text()
        with worker.doc.transaction():
            del worker.column(c.PREPARED)["t1"]
            worker.column(c.DOING)["t1"] = Map(task_fields("t1", worker="w1", output=output))
        start = anyio.current_time()
        await worker.push()
        assert await client.next_update(5) - start < LAZY_S / 2
        output += "Hello"
        start = anyio.current_time()
        await worker.push()
        assert await client.next_update(5) - start < LAZY_S / 2
        assert str(client.column(c.DOING)["t1"]["output"]) == "Hello"

        # The owner cancels: w1 hears of it at once.
        start = anyio.current_time()
        client.column(c.DOING)["t1"]["cancel"] = True
        await client.push()
        assert await worker.next_update(5) - start < LAZY_S / 2
        assert worker.column(c.DOING)["t1"]["cancel"] is True

        # w2 got nothing at once all along, and yet has everything in the end.
        with anyio.fail_after(5):
            while "t1" not in other_worker.column(c.DOING) or not other_worker.column(c.DOING)["t1"].get("cancel"):
                assert await other_worker.next_update(5) - start >= LAZY_S * 0.9
        tg.cancel_scope.cancel()


@CHANNELS
async def test_a_worker_back_on_a_new_connection_hears_at_once_of_the_tasks_it_holds(
    channel_kind: type[MemoryChannel], archive: TaskArchive
) -> None:
    """After a reconnect (or a server restart) a worker's new connection follows the tasks the
    board says it holds: their requeue reaches it at once, not with its batch, or it would run
    on a stale attempt whose writes the worker fence refuses."""
    room = BoardRoom("test", None, archive, RoomSettings(lazy_s=LAZY_S, worker_lazy_s=WORKER_LAZY_S))
    broker, worker = Peer(channel_kind), Peer(channel_kind)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(room.start)
            tg.start_soon(room.serve, broker.channel)
            await broker.announce({c.A_ROLE: "broker", c.A_ID: "b1"})
            broker.column(c.PREPARED)["t1"] = Map(task_fields("t1", worker="w1"))
            await broker.push()
            with anyio.fail_after(5):
                while "t1" not in room.board.column_map(Column.PREPARED):
                    await anyio.sleep(0.01)
            # The worker comes back: a new connection, syncing the board, announcing w1.
            tg.start_soon(room.serve, worker.channel)
            await worker.channel.to_room.send(codec.sync_step1(worker.doc.get_state()))
            await worker.next_update(5)  # the sync: t1 is in its replica, assigned to it
            assert worker.column(c.PREPARED)["t1"]["worker"] == "w1"
            await worker.announce({c.A_ROLE: "worker", c.A_ID: "w1", c.A_SLOTS: 1})
            with anyio.fail_after(5):
                while len(room.awareness.states()) < 2:
                    await anyio.sleep(0.01)
            start = anyio.current_time()
            with broker.doc.transaction():  # the broker requeues it
                del broker.column(c.PREPARED)["t1"]
                broker.column(c.TODO)["t1"] = Map(task_fields("t1", attempt=2))
            await broker.push()
            assert await worker.next_update(5) - start < LAZY_S / 2
            assert "t1" not in worker.column(c.PREPARED)
            tg.cancel_scope.cancel()
    finally:
        for peer in (broker, worker):
            peer.channel.dispose()


async def test_a_direct_channel_gets_urgent_news_when_the_batch_is_released_and_all_of_it() -> None:
    """While the room handles a message, urgent sends to direct channels wait; released, they
    leave at once, without a sender task, merged with what waited lazily."""
    channel = DirectMemoryChannel()
    batch = SendBatch()
    conn = Connection(channel, keepalive_s=30, lazy_s=LAZY_S, batch=batch)
    tasks, updates = _source()
    try:
        tasks["a"] = "lazy"
        conn.enqueue_update(updates[-1], urgent=False)
        batch.open = True
        tasks["b"] = "urgent"
        conn.enqueue_update(updates[-1], urgent=True)
        tasks["c"] = "also in the batch"
        conn.enqueue_update(updates[-1], urgent=True)
        assert channel.sent_now == 0, "sent while the batch was open"
        batch.release()
        assert channel.sent_now == 1, "not sent at once on release, in one message"
        _, data = channel.sent.receive_nowait()
        assert _todo_of(data) == {"a": "lazy", "b": "urgent", "c": "also in the batch"}
    finally:
        channel.dispose()


async def test_a_lazy_update_leaves_a_direct_channel_at_its_deadline_without_the_sender_task() -> None:
    """Queued lazily, an update arms a loop timer: no sender task runs (none is started here),
    and it leaves at once when its time is up, merged with the lazy ones after it."""
    channel = DirectMemoryChannel()
    conn = Connection(channel, keepalive_s=30, lazy_s=0.05, batch=SendBatch())
    tasks, updates = _source()
    try:
        start = anyio.current_time()
        for key in ("a", "b"):
            tasks[key] = "lazy"
            conn.enqueue_update(updates[-1], urgent=False)
        with anyio.fail_after(5):
            at, data = await channel.sent.receive()
        assert at - start >= 0.05 * 0.9, "left before its deadline"
        assert channel.sent_now == 1
        assert _todo_of(data) == {"a": "lazy", "b": "lazy"}
    finally:
        channel.dispose()


async def test_what_left_with_an_urgent_update_is_not_sent_again_at_the_deadline() -> None:
    """What waited lazily left with an urgent update: when the deadline passes, nothing more
    is sent."""
    channel = DirectMemoryChannel()
    conn = Connection(channel, keepalive_s=30, lazy_s=0.05, batch=SendBatch())
    tasks, updates = _source()
    try:
        tasks["a"] = "lazy"
        conn.enqueue_update(updates[-1], urgent=False)
        tasks["b"] = "urgent"
        conn.enqueue_update(updates[-1], urgent=True)
        conn.release()  # as the room's batch does
        _, data = channel.sent.receive_nowait()
        assert _todo_of(data) == {"a": "lazy", "b": "urgent"}
        with anyio.move_on_after(0.15):  # past the deadline: a timer still armed sends by then
            await channel.sent.receive()
            pytest.fail("sent again when the lazy deadline passed")
        assert channel.sent_now == 1
    finally:
        channel.dispose()


async def test_a_direct_channel_that_is_not_writable_leaves_it_to_the_sender_task() -> None:
    """A peer that reads slowly: nothing is written at once; the sender task sends it all,
    merged, through the channel's awaiting `send`."""
    channel = DirectMemoryChannel()
    channel.writable = False
    batch = SendBatch()
    conn = Connection(channel, keepalive_s=30, lazy_s=LAZY_S, batch=batch)
    tasks, updates = _source()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.run_sender)
            for key in ("a", "b"):
                batch.open = True
                tasks[key] = key
                conn.enqueue_update(updates[-1], urgent=True)
                batch.release()
            assert channel.sent_now == 0
            with anyio.fail_after(5):
                _, data = await channel.sent.receive()
            assert _todo_of(data) == {"a": "a", "b": "b"}
            tg.cancel_scope.cancel()
    finally:
        channel.dispose()


async def test_messages_handled_in_one_turn_reach_a_direct_peer_as_one(archive: TaskArchive) -> None:
    """Under load: two peers' updates that arrive together go to a third peer (a broker, which
    wants everything at once) in one message, not one each."""
    room = BoardRoom("test", None, archive, RoomSettings(lazy_s=LAZY_S, worker_lazy_s=WORKER_LAZY_S))
    first, second, broker = (Peer(DirectMemoryChannel) for _ in range(3))
    try:
        async with anyio.create_task_group() as tg:
            await _join(tg, room, (first, second, broker))
            await broker.announce({c.A_ROLE: "broker", c.A_ID: "b1"})
            await _until_present(room, 1)
            first.column(c.TODO)["t1"] = Map(task_fields("t1"))
            second.column(c.TODO)["t2"] = Map(task_fields("t2"))
            channel = broker.channel
            assert isinstance(channel, DirectMemoryChannel)
            sent_before = channel.sent_now
            # Both arrive before the room runs again, as from two sockets in one poll.
            for peer in (first, second):
                for update in peer._updates:
                    peer.channel.to_room.send_nowait(codec.sync_update(update))
                peer._updates.clear()
            await broker.next_update(5)
            assert set(broker.column(c.TODO).keys()) == {"t1", "t2"}, "the updates came apart"
            assert channel.sent_now - sent_before == 1
            tg.cancel_scope.cancel()
    finally:
        for peer in (first, second, broker):
            peer.channel.dispose()


async def test_work_after_a_batch_runs_once_its_sends_are_out() -> None:
    """`after_release`: what need not delay the sends runs after them, and one callback
    failing does not cost the next its turn."""
    channel = DirectMemoryChannel()
    batch = SendBatch()
    conn = Connection(channel, keepalive_s=30, lazy_s=LAZY_S, batch=batch)
    tasks, updates = _source()
    seen: list[int] = []

    def failing() -> None:
        raise RuntimeError("a bug in one callback")

    try:
        batch.open = True
        tasks["a"] = "urgent"
        conn.enqueue_update(updates[-1], urgent=True)
        batch.after_release(failing)
        batch.after_release(lambda: seen.append(channel.sent_now))
        assert seen == []
        batch.release()
        assert seen == [1], "ran before the batch's send, or not at all"
    finally:
        channel.dispose()


async def test_finished_listeners_get_each_entry_after_the_send(archive: TaskArchive) -> None:
    """Two tasks entering `done` in one write: each listener call gets its own task's fields,
    and only once the messages the write caused are out (metrics must not delay an answer)."""
    room = BoardRoom("test", None, archive, RoomSettings(lazy_s=LAZY_S, worker_lazy_s=WORKER_LAZY_S))
    finished: list[dict[str, Any]] = []
    got_both = anyio.Event()

    def listener(fields: dict[str, Any]) -> None:
        finished.append(fields)
        if len(finished) == 2:
            got_both.set()

    room.on_finished(listener)
    async with anyio.create_task_group() as tg:
        await tg.start(room.start)

        def finish_both(board: Any) -> None:
            for task_id in ("t1", "t2"):
                board.column_map(Column.DONE)[task_id] = Map(task_fields(task_id, status="succeeded"))

        room.server_write(finish_both)
        assert finished == [], "listeners ran inside the write, before its messages left"
        with anyio.fail_after(5):
            await got_both.wait()
        assert sorted(f["id"] for f in finished) == ["t1", "t2"]
        tg.cancel_scope.cancel()


async def test_a_workers_answer_reaches_its_owner_before_the_board_applies_it_and_once(archive: TaskArchive) -> None:
    """A worker's checked update goes to the task's owner at once, ahead of the board's apply,
    its observers and whatever the server writes because of it; the board's own copy of the
    update is not sent to the owner again."""
    room = BoardRoom("test", None, archive, RoomSettings(lazy_s=LAZY_S, worker_lazy_s=WORKER_LAZY_S))
    client, broker, worker = (Peer(DirectMemoryChannel) for _ in range(3))
    owner_channel = client.channel
    assert isinstance(owner_channel, DirectMemoryChannel)
    sent_at_commit: list[int] = []
    try:
        async with anyio.create_task_group() as tg:
            await _join(tg, room, (client, broker, worker))
            await broker.announce({c.A_ROLE: "broker", c.A_ID: "b1"})
            await worker.announce({c.A_ROLE: "worker", c.A_ID: "w1", c.A_SLOTS: 1})
            await _until_present(room, 2)
            client.column(c.TODO)["t1"] = Map(task_fields("t1"))
            await client.push()
            await broker.next_update(5)
            with broker.doc.transaction():
                del broker.column(c.TODO)["t1"]
                broker.column(c.PREPARED)["t1"] = Map(task_fields("t1", worker="w1"))
            await broker.push()
            await worker.next_update(5)
            while owner_channel.sent.statistics().current_buffer_used:
                owner_channel.sent.receive_nowait()  # what the owner got so far
            room.doc.observe(lambda event: sent_at_commit.append(owner_channel.sent_now))
            sent_before = owner_channel.sent_now
            with worker.doc.transaction():
                del worker.column(c.PREPARED)["t1"]
                worker.column(c.DONE)["t1"] = Map(task_fields("t1", worker="w1", status="succeeded"))
            await worker.push()
            await client.next_update(5)
            assert client.column(c.DONE)["t1"]["status"] == "succeeded"
            assert sent_at_commit and sent_at_commit[0] == sent_before + 1, (
                "the owner got the answer only after the board applied it"
            )
            with anyio.move_on_after(LAZY_S * 1.5):  # past the lazy deadline: nothing more
                while True:
                    _, data = await owner_channel.sent.receive()
                    message = codec.parse_message(data)
                    if isinstance(message, codec.SyncMessage) and message.payload != codec.EMPTY_UPDATE:
                        pytest.fail("the board's copy of the answer was sent to the owner again")
            tg.cancel_scope.cancel()
    finally:
        for peer in (client, broker, worker):
            peer.channel.dispose()
