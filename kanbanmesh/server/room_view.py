"""The embedded broker's view of a board (a `broker.view.BoardView`): the server's own room, no
socket in between. It lives here, above the broker, so that the broker never imports the server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kanbanmesh.board.document import BoardDoc
from kanbanmesh.server.room import BoardRoom


class RoomView:
    """The embedded broker's view: the room's document and awareness registry."""

    def __init__(self, room: BoardRoom, client_id: int) -> None:
        self._room = room
        self._client_id = client_id

    @property
    def board(self) -> BoardDoc:
        return self._room.board

    @property
    def subject(self) -> str | None:
        return None  # the server's own broker: no token

    def on_remote_change(self, listener: Callable[[], None]) -> None:
        self._room.on_change(listener)

    def on_presence_change(self, listener: Callable[[], None]) -> None:
        self._room.awareness.subscribe(lambda *_: listener())

    def on_reset(self, listener: Callable[[], None]) -> None:
        self._room.on_reset(listener)

    def presence(self) -> dict[int, dict[str, Any]]:
        return {cid: s for cid, s in self._room.awareness.states().items() if cid != self._client_id}

    def presence_ages(self) -> dict[int, float]:
        return self._room.awareness.ages()

    def publish(self, state: dict[str, Any]) -> None:
        self._room.publish_awareness(self, self._client_id, state)
