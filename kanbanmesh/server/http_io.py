"""Reading a request body within a limit, and noticing a client that hung up.

Starlette's `Request.body()` reads a body whole, however large. Here the declared
`Content-Length` is checked before a byte is read, and a body that declares none (chunked) is
counted as it arrives: either way at most `limit` bytes are ever held.

The answer to a refused body goes out at once, and the connection stays open: uvicorn (h11)
discards what is left of the body as it arrives, without buffering it, then serves the next
request. Closing instead would lose the answer: with unread bytes in its receive buffer the
server's socket resets the connection, and a client still sending (every client that does not
wait for `100 Continue`) never reads the 413.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from kanbanmesh.server.openai_errors import ApiError, invalid


class ClientGone(Exception):
    """Raised when the client hung up before its request's body was read."""


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over the limit of {limit} bytes "
                    "(the server's --max-request-bytes)", kind="invalid_request_error",
                    code="request_too_large")


def check_declared_length(request: Request, limit: int) -> None:
    """Raise `ApiError` 413 when the request declares a body over `limit` bytes (before any
    other check: nothing of it is read), 400 for a malformed `Content-Length`."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    # h11 already refuses a non-numeric Content-Length; this guards other servers.
    if not declared.isdigit():
        raise invalid("malformed Content-Length header", code="invalid_request")
    if int(declared) > limit:
        raise too_large(limit)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body; raises `ApiError` 413 as soon as more than `limit` bytes arrived
    (the rest is not read), `ClientGone` when the client hung up."""
    check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise ClientGone() from exc
    return b"".join(chunks)


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client hangs up. Only after the body was read whole: until then the
    ASGI receive channel carries the body."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
