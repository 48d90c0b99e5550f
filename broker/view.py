"""What the broker sees of a board: the document, presence, and a change signal.

The embedded broker works on the server's own room (no socket in between); a standalone broker
works on a `BoardPeer`. Both look the same to `Broker`.
"""

from __future__ import annotations

from typing import Any, Protocol

from kanbanmesh.board.document import BoardDoc
from kanbanmesh.notify import ChangeSignal
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.room import BoardRoom


class BoardView(Protocol):
    @property
    def board(self) -> BoardDoc: ...

    @property
    def changed(self) -> ChangeSignal:
        """Notified after any document or presence change."""
        ...

    def presence(self) -> dict[int, dict[str, Any]]:
        """Awareness states of the other peers."""
        ...

    def publish(self, state: dict[str, Any]) -> None:
        """Set (or renew) the broker's own awareness state."""
        ...


class RoomView:
    """The embedded broker's view: the room's document and awareness registry."""

    def __init__(self, room: BoardRoom, client_id: int) -> None:
        self._room = room
        self._client_id = client_id
        self._changed = ChangeSignal()
        room.on_change(self._changed.notify)
        room.awareness.subscribe(lambda *_: self._changed.notify())

    @property
    def board(self) -> BoardDoc:
        return self._room.board

    @property
    def changed(self) -> ChangeSignal:
        return self._changed

    def presence(self) -> dict[int, dict[str, Any]]:
        return {cid: s for cid, s in self._room.awareness.states().items() if cid != self._client_id}

    def publish(self, state: dict[str, Any]) -> None:
        self._room.publish_awareness(self, self._client_id, state)


class PeerView:
    """A standalone broker's view: a websocket peer of the board."""

    def __init__(self, peer: BoardPeer) -> None:
        self._peer = peer
        self._changed = ChangeSignal()
        peer.on_remote_change(self._changed.notify)
        peer.awareness.observe(lambda topic, _: self._changed.notify() if topic == "change" else None)

    @property
    def board(self) -> BoardDoc:
        return self._peer.board

    @property
    def changed(self) -> ChangeSignal:
        return self._changed

    def presence(self) -> dict[int, dict[str, Any]]:
        return self._peer.peers()

    def publish(self, state: dict[str, Any]) -> None:
        self._peer.set_presence(state)
