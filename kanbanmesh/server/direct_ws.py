"""A direct path for the board's websocket messages, under uvicorn.

The handshake, routing and authorization go through Starlette as before (`board_socket`).
Once a board connection is accepted, its binary messages skip the ASGI layers: a message is
read straight off uvicorn's queue and written straight to the transport, framed by the same
`websockets` sans-I/O protocol uvicorn uses. Per message that saves a hop through Starlette's
and uvicorn's `receive`/`send` (message dicts, state checks, middleware wrappers), a pause and
resume of the socket's reading (two `epoll_ctl` calls), and, in the room, the wake-up of a
sender task: `send_now` writes at once, from the code that has the message.

Everything else stays uvicorn's: keepalive pings, close handshakes, the disconnect events put
on its queue, shutdown. Flow control too: reading pauses while more than `_READ_AHEAD`
messages wait (uvicorn pauses after every one), and `send_now` refuses while the transport's
buffer is above its high-water mark, so a slow peer's messages wait in the room, merged.

uvicorn's protocol classes are no public API: uvicorn is pinned to one version in
pyproject.toml, and tests/test_library_internals.py names what is used of it here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

from kanbanmesh.errors import ConnectionClosedError

# The ASGI scope extension under which the protocol offers the direct path.
DIRECT_EXTENSION = "kanbanmesh.direct"

# Messages read ahead of the room before the socket's reading pauses.
_READ_AHEAD = 64


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol, offering `DirectChannel` in the ASGI scope."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct = False  # set by `DirectChannel`: the app reads the queue itself

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # an upgrade uvicorn accepted: the app runs next
            scope["extensions"][DIRECT_EXTENSION] = self

    def send_receive_event_to_app(self) -> None:
        if not self.direct:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # as uvicorn: past our close, reads only wait for the peer's reply
        # A text frame is handed on as its bytes, to fail decoding with a reason.
        self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused and self.queue.qsize() > _READ_AHEAD:
            self.read_paused = True
            self.transport.pause_reading()


class DirectChannel:
    """A `Channel` over `DirectWebSocketProtocol`, with a synchronous `send_now`."""

    def __init__(self, protocol: DirectWebSocketProtocol, path: str) -> None:
        protocol.direct = True
        self._protocol = protocol
        self._path = path

    @classmethod
    def of(cls, scope: Mapping[str, Any], path: str) -> DirectChannel | None:
        """The direct channel of an accepted websocket, if the server offers one."""
        protocol = scope.get("extensions", {}).get(DIRECT_EXTENSION)
        return cls(protocol, path) if isinstance(protocol, DirectWebSocketProtocol) else None

    @property
    def path(self) -> str:
        return self._path

    @property
    def writable(self) -> bool:
        """The transport takes more now (its buffer is below the high-water mark)."""
        return self._protocol.writable.is_set()

    def _closing(self) -> bool:
        protocol = self._protocol
        return protocol.close_sent or protocol.disconnected or protocol.transport.is_closing()

    def send_now(self, message: bytes) -> bool:
        """Write `message` at once, whatever the transport's buffer holds; False when the
        connection is closing or gone."""
        if self._closing():
            return False
        protocol = self._protocol
        try:
            protocol.conn.send_binary(message)
        except InvalidState:  # the peer's close arrived first
            return False
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        return True

    async def send(self, message: bytes) -> bool:
        await self._protocol.writable.wait()  # set again when the connection is lost
        return self.send_now(message)

    async def recv(self) -> bytes:
        protocol = self._protocol
        queue = protocol.queue
        message = queue.get_nowait() if queue.qsize() else await queue.get()
        if protocol.read_paused and queue.qsize() <= _READ_AHEAD // 2:
            protocol.read_paused = False
            protocol.transport.resume_reading()
        if message["type"] == "websocket.disconnect":
            raise ConnectionClosedError(
                "peer closed", code=message.get("code"), reason=message.get("reason") or ""
            )
        data = message.get("bytes")
        return data if isinstance(data, bytes) else str(message.get("text") or "").encode("utf-8")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._closing():
            return
        protocol = self._protocol
        try:
            protocol.conn.send_close(code, reason)
        except InvalidState:
            return
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        protocol.close_sent = True
        # As uvicorn's close: the room's reader, if waiting, sees the connection end.
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if protocol.read_paused:  # read on, until the peer's close reply arrives
            protocol.read_paused = False
            protocol.transport.resume_reading()
        protocol.close_timer = protocol.loop.call_later(protocol.close_timeout, protocol.transport.close)
