"""One connection's session with a room: its sender, its reader, and the close code for each way
a message can be refused (docs/protocol.md lists them)."""

from __future__ import annotations

import logging
import time

import anyio
from anyio.abc import TaskGroup

from awareness.registry import AwarenessConflictError
from kanbanmesh.board import constants as c
from kanbanmesh.errors import ConnectionClosedError, ProtocolError
from kanbanmesh.protocol import codec
from kanbanmesh.server.connection import Connection
from kanbanmesh.server.ingress import Ingress
from kanbanmesh.server.lifecycle import RoomDocument
from kanbanmesh.server.room_settings import RoomStats
from kanbanmesh.server.validation import UpdateRefused

log = logging.getLogger(__name__)


class Session:
    """Serves one connection until it closes; a peer breaking a rule is closed with a reason."""

    def __init__(self, conn: Connection, ingress: Ingress, document: RoomDocument, stats: RoomStats) -> None:
        self._conn = conn
        self._ingress = ingress
        self._document = document
        self._stats = stats

    async def run(self) -> None:
        conn = self._conn
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run_sender, tg.cancel_scope)
            expires_at = conn.identity.expires_at
            if expires_at is not None:
                tg.start_soon(self._close_at_expiry, expires_at)
            try:
                await self._read_loop(tg)
            finally:
                tg.cancel_scope.cancel()

    async def _close_at_expiry(self, expires_at: float) -> None:
        # A token is checked when the connection opens; it must not outlive its `exp` there.
        await anyio.sleep(max(0.0, expires_at - time.time()))
        await self._conn.close(c.CLOSE_TOKEN_EXPIRED, "token expired: reconnect with a fresh token")

    async def _run_sender(self, scope: anyio.CancelScope) -> None:
        await self._conn.run_sender()
        scope.cancel()  # the peer is gone: stop reading too

    async def _read_loop(self, tg: TaskGroup) -> None:
        conn, name = self._conn, self._document.name
        while True:
            try:
                data = await conn.channel.recv()
            except ConnectionClosedError:
                return
            try:
                token = self._ingress.handle(conn, data)
                if token is not None:
                    tg.start_soon(self._acknowledge_durable, token)
            except ProtocolError as exc:
                self._stats.updates_refused += 1
                await conn.close(c.CLOSE_PROTOCOL_ERROR, _reason(f"malformed message: {exc}"))
                return
            except UpdateRefused as exc:
                self._stats.updates_refused += 1
                log.info("board %s: refused an update: %s", name, exc.reason)
                await conn.close(exc.code, _reason(exc.reason))
                return
            except AwarenessConflictError as exc:
                code = c.CLOSE_TRY_AGAIN_LATER if exc.retry else c.CLOSE_POLICY_VIOLATION
                await conn.close(code, _reason(str(exc)))
                return
            except Exception:
                # A bug of ours, not the peer's: say so, and keep serving everybody else.
                self._stats.updates_refused += 1
                log.exception("board %s: handling a message failed", name)
                await conn.close(c.CLOSE_INTERNAL_ERROR, "internal error: the message was not applied")
                return

    async def _acknowledge_durable(self, token: int) -> None:
        # Everything this connection sent before the request is applied and queued for the
        # store: once the store has committed its queue, all of it is on disk.
        await self._document.flush()
        self._conn.enqueue_message(codec.durable_message(token))


def _reason(text: str) -> str:
    # A close frame's reason must fit in 123 bytes of UTF-8.
    raw = text.encode("utf-8")[:123]
    return raw.decode("utf-8", errors="ignore")
