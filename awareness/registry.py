"""The server's record of who is connected and in what state (Yjs awareness).

Unlike pycrdt-websocket's room, the registry knows which connection announced which client ids,
so it can remove them the moment the connection closes, send every existing state to a peer
that joins, and refuse a connection that sets the state of another connection's client id.
It keeps no state of its own (no phantom peer).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from kanbanmesh.board import constants as c
from kanbanmesh.board.limits import EntryLimits, value_problem
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.notify import Listeners, Subscription
from kanbanmesh.protocol.codec import AwarenessEntry, decode_awareness, encode_awareness

# The subject of the states the server itself sets (no token names it: it holds no characters
# a token's subject may not).
SERVER_SUBJECT = "\x00server"

# The depth and width an awareness state's values may have (its size: `AwarenessLimits`).
_STATE_VALUES = EntryLimits(max_depth=16, max_items=1000)


class AwarenessConflictError(Exception):
    """Raised when a connection writes awareness it may not: for a client id another
    connection owns, past the limits, or a state its `admit` check refuses. `retry`: the
    refusal may pass later (the client id's other connection may be a dead one of the same
    peer, not yet noticed gone)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class AwarenessLimits:
    max_state_bytes: int = 16 << 10  # one state, as JSON
    max_client_ids: int = 32  # client ids one connection may set states for, removed ones too
    # Removed client ids remembered with their last clock, so that a stale state relayed
    # after its owner left (stock y-websocket relays what it heard) is known as stale.
    max_removed: int = 4096


@dataclass
class _Peer:
    owner: Hashable | None  # None: removed, remembered for its clock (free for anybody)
    clock: int
    state: dict[str, Any] | None
    subject: str | None = None
    updated: float = field(default_factory=time.monotonic)


AwarenessListener = Callable[[list[int], list[int], list[int]], None]


class AwarenessRegistry:
    """Awareness states of one board, keyed by Yjs client id, each bound to its connection."""

    def __init__(self, limits: AwarenessLimits | None = None) -> None:
        self._limits = limits or AwarenessLimits()
        self._peers: dict[int, _Peer] = {}
        self._removed: dict[int, _Peer] = {}  # oldest first (see `AwarenessLimits.max_removed`)
        self._listeners: Listeners[[list[int], list[int], list[int]]] = Listeners()

    def subscribe(self, listener: AwarenessListener) -> Subscription:
        """Call `listener(added, updated, removed)` on every change; cancel the returned
        `Subscription` to stop."""
        return self._listeners.add(listener)

    def states(self) -> dict[int, dict[str, Any]]:
        """Current states of present peers (left peers excluded)."""
        return {cid: p.state for cid, p in self._peers.items() if p.state is not None}

    def ages(self) -> dict[int, float]:
        """Seconds since each present state was last set or renewed."""
        now = time.monotonic()
        return {cid: now - p.updated for cid, p in self._peers.items() if p.state is not None}

    def roles_of(self, owner: Hashable) -> tuple[frozenset[str], frozenset[str]]:
        """The roles `owner`'s states announce, and the worker ids among them."""
        states = [p.state for p in self._peers.values() if p.owner is owner and p.state is not None]
        roles = frozenset(str(s.get(c.A_ROLE)) for s in states)
        workers = frozenset(str(s.get(c.A_ID)) for s in states if s.get(c.A_ROLE) == PeerRole.WORKER)
        return roles, workers

    def announced_by(self, owner: Hashable) -> tuple[frozenset[str], frozenset[str]]:
        """The ids and names of the workers `owner` announced."""
        states = [
            p.state for p in self._peers.values()
            if p.owner is owner and p.state is not None and p.state.get(c.A_ROLE) == PeerRole.WORKER
        ]
        return (
            frozenset(str(s.get(c.A_ID)) for s in states),
            frozenset(str(s.get(c.A_NAME)) for s in states if s.get(c.A_NAME)),
        )

    def apply(
        self, owner: Hashable, update: bytes, *, subject: str | None = None,
        admit: Callable[[AwarenessEntry], None] | None = None,
    ) -> bytes | None:
        """Apply an awareness update from `owner` (a connection whose token names `subject`;
        None without a token); returns what to forward to peers (None: nothing).

        Stock y-websocket clients re-broadcast every awareness change they hear, other peers'
        included, with the clock they heard: such an echo is ignored, and so is a state
        relayed after its owner left (its clock is below the removal's). A client id of
        another connection of the same subject is taken over (the same peer, reconnected
        before its old connection was noticed gone); without subjects (an open server) nobody
        can tell that peer from another, so the update is refused for now (`retry`).
        `admit(entry)` may refuse each state the update sets, by raising; nothing is applied
        then. Raises `ProtocolError` for malformed bytes and `AwarenessConflictError` for a
        client id another connection owns, or past the limits.
        """
        entries = decode_awareness(update)
        accepted: list[AwarenessEntry] = []
        for entry in entries:
            peer = self._peers.get(entry.client_id) or self._removed.get(entry.client_id)
            if peer is not None and entry.clock < peer.clock:
                continue  # stale, as Yjs ignores it too
            if peer is not None and peer.owner is not None and peer.owner is not owner and peer.state is not None:
                if entry.clock == peer.clock:
                    continue  # an echo of what we sent out
                if subject is None or peer.subject != subject:
                    raise AwarenessConflictError(
                        f"client id {entry.client_id} belongs to another connection",
                        retry=subject is None,
                    )
            accepted.append(entry)
        self._check_limits(owner, accepted)
        if admit is not None:
            for entry in accepted:
                if entry.state is not None:
                    admit(entry)
        added, updated, removed = [], [], []
        for entry in accepted:
            peer = self._peers.get(entry.client_id)
            if entry.state is None:
                if peer is not None and peer.state is not None:
                    removed.append(entry.client_id)
            elif peer is None or peer.state is None:
                added.append(entry.client_id)
            elif peer.state != entry.state:
                updated.append(entry.client_id)
            self._removed.pop(entry.client_id, None)
            self._peers[entry.client_id] = _Peer(owner, entry.clock, entry.state, subject)
        self._emit(added, updated, removed)
        return encode_awareness(accepted) if accepted else None

    def _check_limits(self, owner: Hashable, entries: list[AwarenessEntry]) -> None:
        limits = self._limits
        for entry in entries:
            if entry.state is None:
                continue
            size = len(json.dumps(entry.state, separators=(",", ":")).encode("utf-8"))
            if size > limits.max_state_bytes:
                raise AwarenessConflictError(
                    f"awareness state of {size} bytes, over the limit of {limits.max_state_bytes}"
                )
            problem = value_problem(entry.state, _STATE_VALUES)
            if problem is not None:
                raise AwarenessConflictError(f"awareness state holds {problem}")
        owned = {cid for cid, p in self._peers.items() if p.owner is owner}
        owned.update(entry.client_id for entry in entries)
        if len(owned) > limits.max_client_ids:
            raise AwarenessConflictError(
                f"more than {limits.max_client_ids} awareness client ids on one connection"
            )

    def set_local(self, owner: Hashable, client_id: int, state: dict[str, Any] | None) -> bytes:
        """Set a state owned by the server itself (the embedded broker); returns the update."""
        peer = self._peers.get(client_id)
        # Yjs ignores a state whose clock is not above the one it knows (0 for a stranger).
        clock = 1 if peer is None else peer.clock + 1
        entry = AwarenessEntry(client_id, clock, state)
        forwarded = self.apply(owner, encode_awareness([entry]), subject=SERVER_SUBJECT)
        return forwarded if forwarded is not None else encode_awareness([entry])

    def remove_owner(self, owner: Hashable) -> bytes | None:
        """Remove every client id of a closed connection; returns the update announcing it."""
        gone = [AwarenessEntry(cid, p.clock + 1, None) for cid, p in self._peers.items() if p.owner is owner]
        for entry in gone:
            del self._peers[entry.client_id]
            self._remember_removed(entry)
        removed = [e.client_id for e in gone]
        if not removed:
            return None
        self._emit([], [], removed)
        return encode_awareness(gone)

    def _remember_removed(self, entry: AwarenessEntry) -> None:
        self._removed.pop(entry.client_id, None)
        self._removed[entry.client_id] = _Peer(None, entry.clock, None)
        while len(self._removed) > self._limits.max_removed:
            del self._removed[next(iter(self._removed))]

    def expire(self, max_age: float) -> bytes | None:
        """Remove states not renewed for `max_age` seconds; returns the removal update."""
        cutoff = time.monotonic() - max_age
        stale = [
            AwarenessEntry(cid, p.clock + 1, None)
            for cid, p in self._peers.items()
            if p.updated < cutoff and p.state is not None
        ]
        for entry in stale:
            self._peers[entry.client_id].state = None
            self._peers[entry.client_id].clock = entry.clock
        if not stale:
            return None
        self._emit([], [], [e.client_id for e in stale])
        return encode_awareness(stale)

    def full_update(self) -> bytes | None:
        """Every present state, for a peer that just joined; None when nobody is there."""
        entries = [
            AwarenessEntry(cid, p.clock, p.state)
            for cid, p in self._peers.items()
            if p.state is not None
        ]
        return encode_awareness(entries) if entries else None

    def _emit(self, added: list[int], updated: list[int], removed: list[int]) -> None:
        if added or updated or removed:
            self._listeners.notify(added, updated, removed)
