"""The server's record of who is connected and in what state (Yjs awareness).

Unlike pycrdt-websocket's room, the registry knows which connection announced which client ids,
so it can remove them the moment the connection closes, send every existing state to a peer
that joins, and refuse a connection that sets the state of another connection's client id.
It keeps no state of its own (no phantom peer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from kanbanmesh.board import constants as c
from kanbanmesh.protocol.codec import AwarenessEntry, decode_awareness, encode_awareness


class AwarenessConflictError(Exception):
    """Raised when a connection writes awareness for a client id that another connection owns."""


@dataclass
class _Peer:
    owner: Hashable
    clock: int
    state: dict[str, Any] | None
    updated: float = field(default_factory=time.monotonic)


AwarenessListener = Callable[[list[int], list[int], list[int]], None]


class AwarenessRegistry:
    """Awareness states of one board, keyed by Yjs client id, each bound to its connection."""

    def __init__(self) -> None:
        self._peers: dict[int, _Peer] = {}
        self._listeners: list[AwarenessListener] = []

    def subscribe(self, listener: AwarenessListener) -> Callable[[], None]:
        """Call `listener(added, updated, removed)` on every change; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

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
        workers = frozenset(str(s.get(c.A_ID)) for s in states if s.get(c.A_ROLE) == "worker")
        return roles, workers

    def announced_by(self, owner: Hashable) -> tuple[frozenset[str], frozenset[str]]:
        """The ids and names of the workers `owner` announced."""
        states = [
            p.state for p in self._peers.values()
            if p.owner is owner and p.state is not None and p.state.get(c.A_ROLE) == "worker"
        ]
        return (
            frozenset(str(s.get(c.A_ID)) for s in states),
            frozenset(str(s.get(c.A_NAME)) for s in states if s.get(c.A_NAME)),
        )

    def owner_of(self, client_id: int) -> Hashable | None:
        """The connection a present client id belongs to (None: nobody's)."""
        peer = self._peers.get(client_id)
        return peer.owner if peer is not None and peer.state is not None else None

    def client_ids_of(self, owner: Hashable) -> list[int]:
        return [cid for cid, p in self._peers.items() if p.owner is owner and p.state is not None]

    def apply(self, owner: Hashable, update: bytes) -> bytes | None:
        """Apply an awareness update from `owner`; returns what to forward to peers (None: nothing).

        Stock y-websocket clients re-broadcast every awareness change they hear, other peers'
        included, with the clock they heard: such an echo is ignored. Raises `ProtocolError`
        for malformed bytes and `AwarenessConflictError` when the update would change a state
        that another connection owns.
        """
        entries = decode_awareness(update)
        accepted: list[AwarenessEntry] = []
        for entry in entries:
            peer = self._peers.get(entry.client_id)
            if peer is not None and entry.clock < peer.clock:
                continue  # stale, as Yjs ignores it too
            if peer is not None and peer.owner is not owner and peer.state is not None:
                if entry.clock == peer.clock:
                    continue  # an echo of what we sent out
                raise AwarenessConflictError(
                    f"client id {entry.client_id} belongs to another connection"
                )
            accepted.append(entry)
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
            self._peers[entry.client_id] = _Peer(owner, entry.clock, entry.state)
        self._emit(added, updated, removed)
        return encode_awareness(accepted) if accepted else None

    def set_local(self, owner: Hashable, client_id: int, state: dict[str, Any] | None) -> bytes:
        """Set a state owned by the server itself (the embedded broker); returns the update."""
        peer = self._peers.get(client_id)
        # Yjs ignores a state whose clock is not above the one it knows (0 for a stranger).
        clock = 1 if peer is None else peer.clock + 1
        entry = AwarenessEntry(client_id, clock, state)
        forwarded = self.apply(owner, encode_awareness([entry]))
        return forwarded if forwarded is not None else encode_awareness([entry])

    def remove_owner(self, owner: Hashable) -> bytes | None:
        """Remove every client id of a closed connection; returns the update announcing it."""
        gone = [AwarenessEntry(cid, p.clock + 1, None) for cid, p in self._peers.items() if p.owner is owner]
        for entry in gone:
            del self._peers[entry.client_id]
        removed = [e.client_id for e in gone]
        if not removed:
            return None
        self._emit([], [], removed)
        return encode_awareness(gone)

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
            for listener in list(self._listeners):
                listener(added, updated, removed)
