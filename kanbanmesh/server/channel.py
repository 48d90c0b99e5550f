"""The server side of the transport seam: a Starlette websocket as a `Channel`."""

from __future__ import annotations

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from kanbanmesh.errors import ConnectionClosedError


class StarletteChannel:
    """Adapts a Starlette `WebSocket` to `kanbanmesh.protocol.Channel`."""

    def __init__(self, websocket: WebSocket, path: str) -> None:
        self._ws = websocket
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    async def send(self, message: bytes) -> bool:
        # Must not raise on a closed peer: an exception here would end the room's fan-out.
        if self._ws.application_state is not WebSocketState.CONNECTED:
            return False
        try:
            await self._ws.send_bytes(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return False
        return True

    async def recv(self) -> bytes:
        try:
            message = await self._ws.receive()
        except (RuntimeError, OSError) as exc:
            raise ConnectionClosedError("connection lost") from exc
        if message["type"] == "websocket.disconnect":
            raise ConnectionClosedError(
                "peer closed", code=message.get("code"), reason=message.get("reason") or ""
            )
        data = message.get("bytes")
        if data is not None:
            return bytes(data)
        # y-websocket only sends binary frames; a text frame is handed on to fail decoding.
        return str(message.get("text") or "").encode("utf-8")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._ws.application_state is not WebSocketState.CONNECTED:
            return
        try:
            await self._ws.close(code, reason)
        except (RuntimeError, OSError):
            pass
