"""The transport seam: server, broker, worker and SDK talk to a `Channel`, not to a library."""

from __future__ import annotations

from typing import Protocol


class Channel(Protocol):
    """One websocket connection carrying binary y-websocket messages."""

    @property
    def path(self) -> str:
        """The request path without its query string, e.g. `/default`."""
        ...

    async def send(self, message: bytes) -> bool:
        """Send one message. Returns False (never raises) when the peer is gone."""
        ...

    async def recv(self) -> bytes:
        """Receive one message; raises `ConnectionClosedError` once the connection is closed."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a code and a human-readable reason; never raises."""
        ...
