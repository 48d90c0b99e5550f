"""A round-robin HTTP reverse proxy, the usual LiteLLM/nginx set-up in front of llama-servers.

Each request goes whole to the next backend in turn, and the response streams back byte for
byte as it arrives (server-sent events pass through unbuffered). One request per client
connection: the proxy asks the backend to close after the response and tells the client the
same, so no framing beyond the request's `Content-Length` has to be understood. Enough for
the bench's clients (httpx, POST with a JSON body), not a general-purpose proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Self

_HEADER_LIMIT = 64 * 1024
_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection"}


class ProxyError(Exception):
    """A request the proxy cannot forward (malformed, or no backend answered)."""


class RoundRobinProxy:
    """`async with RoundRobinProxy([(host, port), ...]) as proxy:` listens on `proxy.port`."""

    def __init__(
        self, backends: list[tuple[str, int]], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if not backends:
            raise ValueError("a proxy needs at least one backend")
        self._next = itertools.cycle(backends)
        self._host = host
        self._port = port
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.forwarded: dict[tuple[str, int], int] = {b: 0 for b in backends}

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=_HEADER_LIMIT
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # always inside a task here
        self._handlers.add(task)
        try:
            head, body = await _read_request(reader)
            backend = next(self._next)
            self.forwarded[backend] += 1
            await _relay(head, body, backend, writer)
        except asyncio.CancelledError:
            # The proxy is closing (the bench stops): end quietly. A cancelled handler would be
            # logged as an error by asyncio's stream callback (Python 3.11).
            pass
        except (ProxyError, OSError, asyncio.IncompleteReadError) as exc:
            with contextlib.suppress(OSError):
                message = str(exc).encode()[:500]
                writer.write(
                    b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: " + str(len(message)).encode() + b"\r\n\r\n" + message
                )
                await writer.drain()
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> tuple[list[bytes], bytes]:
    """The request line and headers (hop-by-hop ones dropped, `Connection: close` added) and
    the body, read by `Content-Length`."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw[:-4].split(b"\r\n")
    head = [lines[0]]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"transfer-encoding":
            raise ProxyError("chunked request bodies are not supported")
        if key == b"content-length":
            length = int(value.strip())
        if key not in _HOP_BY_HOP:
            head.append(line)
    head.append(b"Connection: close")
    body = await reader.readexactly(length) if length else b""
    return head, body


async def _relay(
    head: list[bytes], body: bytes, backend: tuple[str, int], client: asyncio.StreamWriter
) -> None:
    """Send the request to `backend` and copy its response to `client` as it arrives, with the
    response's `Connection` header replaced by `close`."""
    up_reader, up_writer = await asyncio.open_connection(*backend, limit=_HEADER_LIMIT)
    try:
        up_writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await up_writer.drain()
        raw = await up_reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        kept = [lines[0]] + [
            line for line in lines[1:] if line.partition(b":")[0].strip().lower() not in _HOP_BY_HOP
        ]
        client.write(b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n")
        await client.drain()
        while chunk := await up_reader.read(65536):
            client.write(chunk)
            await client.drain()
    finally:
        up_writer.close()
        with contextlib.suppress(OSError):
            await up_writer.wait_closed()
