"""A TCP relay between peers and a server, for tests that break the network on purpose.

Peers connect to the proxy (`proxy.url`) instead of the server; each connection is relayed
to the target as it is, byte for byte. The faults:

* `cut()`: every current connection is reset, on both sides at once (RST, no close frame),
  as when a cable is pulled or a NAT forgets the flow. New connections are relayed again.
* `pause()` / `resume()`: a black hole. Connections stay open but nothing is forwarded
  either way; what was sent meanwhile is held and delivered on `resume()`, as TCP would
  retransmit it once the path is back. New connections are accepted but stall too.
* `close()` (or leaving `async with`): cut everything and stop listening.
"""

from __future__ import annotations

import socket
import struct
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.stapled import MultiListener

# SO_LINGER on, zero seconds: close() then sends RST instead of FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


@dataclass(eq=False)
class _Link:
    client: SocketStream
    server: SocketStream
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class TcpProxy:
    """Relays TCP connections from `127.0.0.1:<port>` to `target_host:target_port`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self._links: set[_Link] = set()
        self._flowing = anyio.Event()
        self._flowing.set()
        self._exit_stack: AsyncExitStack | None = None  # holds the relay's task group while open
        self._listener: MultiListener[SocketStream]

    @classmethod
    def to_url(cls, url: str) -> TcpProxy:
        """A proxy for the server at `ws://host:port`."""
        host, port = url.split("://", 1)[1].rstrip("/").rsplit(":", 1)
        return cls(host, int(port))

    @property
    def url(self) -> str:
        """The proxy's address as a kanbanmesh server URL."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections being relayed now."""
        return len(self._links)

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    async def __aenter__(self) -> Self:
        self._listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = self._listener.extra(SocketAttribute.local_port)
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._listener.serve, self._relay)
        stack.callback(tg.cancel_scope.cancel)  # on close: the listener stops first
        self._exit_stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._exit_stack is None:
            return
        stack, self._exit_stack = self._exit_stack, None
        self.resume()
        await self.cut()
        await stack.aclose()
        await self._listener.aclose()

    async def cut(self) -> None:
        """Reset every current connection, both ends."""
        links, self._links = self._links, set()
        for link in links:
            for stream in (link.client, link.server):
                try:
                    stream.extra(SocketAttribute.raw_socket).setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE
                    )
                except OSError:
                    pass  # already gone
            link.scope.cancel()
        for link in links:
            await _close(link)

    def pause(self) -> None:
        """Stop forwarding, both ways, on every connection (they stay open)."""
        if self._flowing.is_set():
            self._flowing = anyio.Event()

    def resume(self) -> None:
        """Forward again, starting with what was held."""
        self._flowing.set()

    async def _relay(self, client: SocketStream) -> None:
        self.accepted += 1
        try:
            server = await anyio.connect_tcp(self.target_host, self.target_port)
        except OSError:
            await client.aclose()  # the server is down: so is the connection to it
            return
        link = _Link(client, server)
        self._links.add(link)
        try:
            with link.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, client, server, tg.cancel_scope)
                    tg.start_soon(self._pump, server, client, tg.cancel_scope)
        finally:
            self._links.discard(link)
            await _close(link)

    async def _pump(self, source: SocketStream, sink: SocketStream, done: anyio.CancelScope) -> None:
        try:
            async for chunk in source:
                while not self._flowing.is_set():
                    await self._flowing.wait()
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        done.cancel()  # one side ended: so does the relay, both ways


async def _close(link: _Link) -> None:
    with anyio.CancelScope(shield=True):
        await link.client.aclose()
        await link.server.aclose()
