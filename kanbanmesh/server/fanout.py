"""Fan-out: which connection gets each update of a board, and how soon.

Every update of the document goes to every connection except the one it came from (the room
calls `send` from its one `Doc.observe` callback). It goes at once (urgent) to a peer it is
news for: one that wants everything (a broker), or one that follows a task the update touches
(its own tasks; for a worker, those assigned to it); to the others lazily, within the
connection's `lazy_s` (see `kanbanmesh.server.connection`). An assignment is news for the
worker, not for the task's owner.

What an update touches is noted while it is applied: the room's column observers note the
tasks that enter or leave a column (`note_*`), the update check the tasks it changes inside.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet

from kanbanmesh.server.connection import Connection, SendBatch, SharedMerges


class FanOut:
    """The connections of one room, and what the update being applied means for each."""

    def __init__(self) -> None:
        self._connections: set[Connection] = set()
        self.merges = SharedMerges()  # one merge per batch that several peers wait on
        self.batch = SendBatch()  # urgent sends held while a peer's message is handled
        self._origin: Connection | None = None
        # Peers a worker's update went to before the board applied it (`forward_early`).
        self._forwarded: frozenset[Connection] = frozenset()
        self._first_in_turn = False  # the message being handled is the loop turn's first
        # What the update being applied does: the tasks it touches, the tasks it assigns (to
        # which worker), the tasks it finishes.
        self._touched: set[str] = set()
        self._assigned: dict[str, str] = {}
        self._finished: set[str] = set()

    @property
    def connections(self) -> AbstractSet[Connection]:
        return self._connections

    def add(self, conn: Connection) -> None:
        self._connections.add(conn)

    def discard(self, conn: Connection) -> None:
        self._connections.discard(conn)

    @property
    def origin(self) -> Connection | None:
        """The connection whose update is being applied (None: a write of the server's own)."""
        return self._origin

    @property
    def first_in_turn(self) -> bool:
        """Whether the message being handled is the first of its event loop turn."""
        return self._first_in_turn

    # Pairs of calls rather than context managers: they run for every message of every peer.

    def message_begins(self) -> None:
        """The room starts handling one peer's message: urgent sends to direct channels are
        held until `message_ends`, so what the server writes because of a peer's update leaves
        in the same message."""
        self._first_in_turn = not self.batch.open  # open: others came in the same turn
        self.batch.open = True

    def message_ends(self) -> None:
        self.batch.release_soon()

    def apply_begins(self, origin: Connection) -> None:
        """`origin`'s update is being applied to the board (until `apply_ends`): it is not
        sent back to `origin`."""
        self._origin = origin

    def apply_ends(self) -> None:
        self._origin = None
        self._forwarded = frozenset()

    def note_touched(self, task_id: str) -> None:
        self._touched.add(task_id)

    def note_all_touched(self, task_ids: Iterable[str]) -> None:
        self._touched.update(task_ids)

    def note_assigned(self, task_id: str, worker: str) -> None:
        self._assigned[task_id] = worker

    def note_finished(self, task_id: str) -> None:
        self._finished.add(task_id)

    def forward_early(self, origin: Connection, update: bytes, news: set[str]) -> None:
        """Send a worker's checked update at once to the peers it is urgent news for (the
        owner of a task it streams into or finishes, brokers), before the board applies it:
        the answer then does not wait for the board's apply, its observers, the store and
        the broker's pass. The board's own copy of the update skips these peers (`send`);
        what the server writes because of it follows in its own message.

        Only for the first message of a loop turn (`first_in_turn`): under load, when others
        follow in the same turn, a peer gets them all in one message with the batch."""
        forwarded = set()
        for conn in self._connections:
            if conn is origin or not conn.wants_at_once(news):
                continue
            conn.enqueue_update(update, urgent=True)  # after what it holds, in order
            conn.send_soonest()
            forwarded.add(conn)
        self._forwarded = frozenset(forwarded)

    def send(self, update: bytes) -> set[str]:
        """Queue an update of the board for every connection but its origin; returns the
        tasks it touched."""
        origin = self._origin
        touched, self._touched = self._touched, set()
        assigned = self._assigned
        if assigned:
            for conn in self._connections:
                conn.follow(t for t, w in assigned.items() if w in conn.worker_ids)
        # An assignment is news for the worker, not for the task's owner.
        moved_on = touched.difference(assigned) if assigned else touched
        for conn in self._connections:
            if conn is not origin and conn not in self._forwarded:
                news = touched if conn.worker_ids else moved_on
                conn.enqueue_update(update, urgent=conn.wants_at_once(news))
        self._assigned = {}
        if self._finished:
            for conn in self._connections:
                conn.unfollow(self._finished)
            self._finished = set()
        return touched

    def broadcast(self, message: bytes) -> None:
        """Queue a ready-made message (awareness) for every connection."""
        for conn in self._connections:
            conn.enqueue_message(message)
