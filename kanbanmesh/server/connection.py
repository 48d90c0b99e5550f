"""One peer's connection to a room: its outbox and the task that drains it.

Updates for a peer are never dropped. While the peer is slow they pile up in its outbox and
are merged into one update (`merge_updates`), so the outbox stays bounded by the size of the
changes rather than by their number, and the peer gets one message instead of thousands.

An update can be queued as not urgent: it then waits up to `lazy_s` for company, and leaves
with the next urgent message or when that time is up, whichever comes first. Peers get other
people's tasks that way (see `kanbanmesh.server.fanout`): on a small machine, waking every
process on the board for every update of every task costs more than the work itself.

Peers that wait on the same updates (idle workers, watchers: their deadlines start with the
same update) flush them in the same tick; `SharedMerges` merges such a batch once for all.

On a channel that can write at once (`DirectSend`: the server's direct websocket path), an
urgent message queued while the room handles a peer's message leaves as soon as the event loop
has run what it already had (`SendBatch`: at once for a single task; under load, once for all
the messages that arrived together), with whatever waited for it, instead of waking the sender
task: one task switch less per message on the path of every task. Not before: what the server
writes because of an update (the pipeline's `enriching` marker, the embedded broker's
assignment) must leave in the same message as the update. Lazy updates leave the same way when
their time is up (a loop timer). The sender task still sends what waits while the peer reads
slowly, what the server writes on its own, and keepalives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import anyio
from pycrdt import merge_updates

from kanbanmesh.auth import OPEN_ACCESS, Identity
from kanbanmesh.protocol import codec
from kanbanmesh.protocol.channel import Channel
from kanbanmesh.server.validation import UpdateChanges

log = logging.getLogger(__name__)

# Merge in place once this many updates wait, so a stalled peer costs memory in proportion
# to what changed, not to how many updates it missed.
_COMPACT_AT = 512

# What a peer's writes are held to: raises `UpdateRefused` for an update it may not write.
Rules = Callable[[UpdateChanges], None]


@runtime_checkable
class DirectSend(Protocol):
    """A channel that can write a message at once, without awaiting."""

    @property
    def writable(self) -> bool:
        """Whether it takes more now (False while the peer reads slowly)."""
        ...

    def send_now(self, message: bytes) -> bool:
        """Write at once; False when the peer is gone."""
        ...


class SendBatch:
    """Urgent messages for direct channels, held while the room handles peers' messages."""

    def __init__(self) -> None:
        self.open = False
        self.held: list[Connection] = []
        self._release_due = False
        self._after: list[Callable[[], None]] = []

    def release_soon(self) -> None:
        """Release once the event loop has run what it already has: every message that
        arrived in the same turn is handled by then, so under load a peer gets one message
        for all of them instead of one each (and is woken once). With nothing else ready, as
        for a single task, that is at once. An asyncio callback, not a task: a task would cost
        a step of its own per release."""
        if not self._release_due:
            self._release_due = True
            asyncio.get_running_loop().call_soon(self.release)

    def after_release(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once the batch is released, after its sends: for work that need
        not delay them (the peers that get them work meanwhile, on the other cores)."""
        self._after.append(callback)
        self.release_soon()

    def release(self) -> None:
        """Close the batch, send what it held, then run what waited for that."""
        self._release_due = False
        self.open = False
        held, self.held = self.held, []
        for conn in held:
            conn.release()
        after, self._after = self._after, []
        for callback in after:
            try:
                callback()
            except Exception:  # one failing must not cost the others their turn
                log.exception("work after a send batch failed")


class SharedMerges:
    """Merges batches of updates, each batch once however many peers send it: the last few
    results are kept, keyed by the batch (a tuple of the very update objects every peer was
    handed; a bytes object hashes its content once and keeps the hash)."""

    def __init__(self, keep: int = 4) -> None:
        self._keep = keep
        self._done: dict[tuple[bytes, ...], bytes] = {}

    def merge(self, updates: list[bytes]) -> bytes:
        if len(updates) == 1:
            return updates[0]
        batch = tuple(updates)
        merged = self._done.get(batch)
        if merged is None:
            merged = merge_updates(*batch)
            if len(self._done) >= self._keep:
                del self._done[next(iter(self._done))]  # the oldest
            self._done[batch] = merged
        return merged


class Connection:
    """A connected peer: `enqueue_*` never block; `run_sender` writes to the channel.

    It also keeps what the room knows of the peer (who it is, what it announced, the tasks it
    follows); the room changes that through the methods below, never by setting fields."""

    def __init__(
        self, channel: Channel, *, keepalive_s: float, lazy_s: float = 0.05,
        merges: SharedMerges | None = None, batch: SendBatch | None = None,
        identity: Identity = OPEN_ACCESS, epoch: int = 0,
    ) -> None:
        self._channel = channel
        self._merges = merges if merges is not None else SharedMerges()
        self._keepalive_s = keepalive_s
        self._lazy_s = lazy_s
        self._identity = identity
        self._epoch = epoch  # the room's document generation this peer's replica belongs to
        # What the room knows of the peer: whether it wants every update at once (a broker),
        # the workers it announced, and the tasks it follows (its own, or assigned to it).
        self._eager = False
        self._worker_ids: frozenset[str] = frozenset()
        self._interests: set[str] = set()
        self._rules: Rules | None = None  # its token's; None: may write anything
        self._fence: Rules | None = None  # the room's worker fence, made once
        self._updates: list[bytes] = []
        self._other: list[bytes] = []
        self._wakeup = anyio.Event()
        self._urgent = False
        self._lazy_timer: asyncio.TimerHandle | None = None  # armed while lazy updates wait
        self._closed = False
        self._direct = channel if isinstance(channel, DirectSend) else None
        self._batch = batch if batch is not None else SendBatch()
        self._held = False  # in the batch
        self._sending = False  # the sender task is writing what it took from the outbox

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def channel(self) -> Channel:
        return self._channel

    @property
    def identity(self) -> Identity:
        """Who the peer is (its token's identity; `OPEN_ACCESS` on an open server)."""
        return self._identity

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def eager(self) -> bool:
        """Whether it gets every update at once (a broker)."""
        return self._eager

    @property
    def worker_ids(self) -> frozenset[str]:
        """The ids of the workers it announced."""
        return self._worker_ids

    def announced(self, worker_ids: frozenset[str], *, eager: bool, lazy_s: float) -> frozenset[str]:
        """Record what the peer announces now (the room's reading of its awareness states):
        its workers, whether it wants every update at once, how long other people's updates
        may wait for it. Returns the worker ids it had not announced before."""
        new = worker_ids - self._worker_ids
        self._worker_ids = worker_ids
        self._eager = eager
        self._lazy_s = lazy_s
        return new

    def follow(self, task_ids: Iterable[str]) -> None:
        """Count updates about `task_ids` as urgent for this peer from now on."""
        self._interests.update(task_ids)

    def unfollow(self, task_ids: Iterable[str]) -> None:
        self._interests.difference_update(task_ids)

    def hold_to(self, rules: Rules) -> None:
        """Hold what this peer writes to `rules` (its token's: set once, when it connects)."""
        self._rules = rules

    def write_rules(self, fence: Callable[[Connection], Rules]) -> Rules | None:
        """The rules this peer's next update is held to (None: none). Its token's; without a
        token, a connection that announced only workers is still held to the worker's rules,
        `fence(self)` (made once): this fences a stale attempt (a worker cut off past its lease
        whose late writes arrive after its task went to another worker)."""
        if self._rules is None and self._worker_ids and not self._eager:
            if self._fence is None:
                self._fence = fence(self)
            return self._fence
        return self._rules

    def wants_at_once(self, news: set[str]) -> bool:
        """Whether an update about the tasks `news` is urgent for this peer: it wants
        everything at once (a broker), or follows one of them."""
        return self._eager or not self._interests.isdisjoint(news)

    def enqueue_update(self, update: bytes, *, urgent: bool = True) -> None:
        if self._closed:
            return
        self._updates.append(update)
        if len(self._updates) >= _COMPACT_AT:
            self._updates = [self._merges.merge(self._updates)]
        if urgent:
            self._urgent = True
            self._signal()
        elif self._lazy_timer is None:
            # A timer of the loop's, not the sender task's: waking the task to re-arm its own
            # timeout cost a task step on the path of the update that queued this one (it ran
            # before the batch went out), and another when the deadline passed for nothing.
            self._lazy_timer = asyncio.get_running_loop().call_later(self._lazy_s, self._lazy_due)

    def _lazy_due(self) -> None:
        self._lazy_timer = None
        if self._closed or not self._updates:
            return
        self._urgent = True
        if self._batch.open:
            self._signal()  # leaves with the batch the room is handling
        else:
            self.release()  # at once where the channel takes it; else the sender task

    def enqueue_message(self, message: bytes) -> None:
        """Queue a ready-made message (awareness, sync step 2)."""
        if self._closed:
            return
        self._other.append(message)
        self._urgent = True
        self._signal()

    def _signal(self) -> None:
        if self._direct is not None and self._batch.open:
            if not self._held:
                self._held = True
                self._batch.held.append(self)
        else:
            self._wakeup.set()

    def send_soonest(self) -> None:
        """Write what is urgent now, batch or not, where the channel takes it at once;
        otherwise it leaves as usual (with the batch, or by the sender task)."""
        if self._urgent and not self._closed:
            self._send_direct()

    def release(self) -> None:
        """Send what the batch held for this peer, at once if the channel takes it now."""
        self._held = False
        if self._urgent and not self._closed and not self._send_direct():
            self._wakeup.set()

    def _send_direct(self) -> bool:
        """Write everything queued at once, if the channel can and nothing is being written
        (or order would break); True when done so."""
        direct = self._direct
        if direct is None or self._sending or not direct.writable:
            return False
        for message in self._take_messages():
            if not direct.send_now(message):
                self._closed = True
                self._wakeup.set()  # the sender task ends, and with it the connection
                break
        return True

    def _take_messages(self) -> list[bytes]:
        """Everything queued, as the messages to write in order: ready-made ones, then the
        updates merged into one; the outbox is empty afterwards, nothing urgent or lazy waits."""
        messages, self._other = self._other, []
        if self._updates:
            messages.append(codec.sync_update(self._merges.merge(self._updates)))
            self._updates = []
        self._urgent = False
        self._disarm_lazy_timer()
        return messages

    def _disarm_lazy_timer(self) -> None:
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None

    async def run_sender(self) -> None:
        """Drain the outbox until the channel closes; sends a keepalive when idle."""
        while not self._closed:
            with anyio.move_on_after(self._keepalive_s) as idle:
                await self._wakeup.wait()
            self._wakeup = anyio.Event()
            if not (self._urgent or idle.cancelled_caught):
                continue
            messages = self._take_messages()
            if idle.cancelled_caught and not messages:
                messages.append(codec.KEEPALIVE)
            self._sending = True
            try:
                for message in messages:
                    if not await self._channel.send(message):
                        self._closed = True
                        return
            finally:
                self._sending = False
            if self._other or self._updates:
                self._send_direct()  # what came while this was written

    async def close(self, code: int, reason: str) -> None:
        self._closed = True
        self._disarm_lazy_timer()  # it would keep the connection alive until it fires
        self._wakeup.set()
        await self._channel.close(code, reason)
