"""What the broker sees of a board: the document, presence, and a change signal.

The embedded broker works on the server's own room (no socket in between, through the server's
`RoomView`); a standalone broker works on a `BoardPeer` (`PeerView`). Both look the same to
`Broker`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from kanbanmesh.board.document import BoardDoc
from kanbanmesh.peer import BoardPeer


class BoardView(Protocol):
    @property
    def board(self) -> BoardDoc: ...

    @property
    def subject(self) -> str | None:
        """The subject of the view's token (its broker id is `<subject>/<name>`), or None."""
        ...

    def on_remote_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` right after each change another peer made to the document,
        outside its transaction: what the listener writes goes out with that change."""
        ...

    def on_presence_change(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after each change of the peers' awareness states."""
        ...

    def on_reset(self, listener: Callable[[], None]) -> None:
        """Call `listener()` when `board` was replaced by a new generation of the document."""
        ...

    def presence(self) -> dict[int, dict[str, Any]]:
        """Awareness states of the other peers."""
        ...

    def presence_ages(self) -> dict[int, float]:
        """Seconds since each other peer last renewed its awareness state (its heartbeat)."""
        ...

    def publish(self, state: dict[str, Any]) -> None:
        """Set (or renew) the broker's own awareness state."""
        ...


class PeerView:
    """A standalone broker's view: a websocket peer of the board."""

    def __init__(self, peer: BoardPeer) -> None:
        self._peer = peer

    @property
    def board(self) -> BoardDoc:
        return self._peer.board

    @property
    def subject(self) -> str | None:
        return self._peer.subject

    def on_remote_change(self, listener: Callable[[], None]) -> None:
        self._peer.on_remote_change(listener)

    def on_presence_change(self, listener: Callable[[], None]) -> None:
        self._peer.on_presence_change(listener)

    def on_reset(self, listener: Callable[[], None]) -> None:
        self._peer.on_reset(listener)

    def presence(self) -> dict[int, dict[str, Any]]:
        return self._peer.peers()

    def presence_ages(self) -> dict[int, float]:
        now_ms = time.time() * 1000.0
        return {
            cid: max(0.0, (now_ms - float(meta.get("lastUpdated", now_ms))) / 1000.0)
            for cid, meta in self._peer.awareness.meta.items()
        }

    def publish(self, state: dict[str, Any]) -> None:
        self._peer.set_presence(state)
