"""Running the server: the store, the hub and uvicorn in one anyio task group.

Signals are handled here rather than by uvicorn, whose handler re-raises the signal as soon as
it stops serving, before the store could flush. SIGTERM and SIGINT stop serving, then the
store's queue is committed, then the process exits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import replace

import anyio
import uvicorn
from anyio.abc import TaskStatus

from kanbanmesh.auth import AuthError, check_secret
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.errors import ConfigurationError
from kanbanmesh.pipeline import HistoryMiddleware, Middleware
from kanbanmesh.server.app import create_app
from kanbanmesh.server.archive import TaskArchive
from kanbanmesh.server.conversations import ConversationStore
from kanbanmesh.server.direct_ws import DirectWebSocketProtocol
from kanbanmesh.server.hub import Hub, HubSettings
from kanbanmesh.server.quota import QuotaLimits
from kanbanmesh.server.room import RoomSettings
from kanbanmesh.server.store import BoardStore
from kanbanmesh.settings import Settings
from rag.collections import Collections
from rag.embedding import ModelCache
from rag.middleware import RetrievalMiddleware

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals are ours (see the module docstring)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hub_settings(settings: Settings) -> HubSettings:
    return HubSettings(
        room=RoomSettings(
            keepalive_s=settings.keepalive_s,
            retention_s=settings.retention_s,
            rotate_after=settings.rotate_after,
            rotate_idle_s=settings.rotate_idle_s,
            default_max_attempts=settings.max_attempts,
            limits=EntryLimits(
                max_task_bytes=settings.max_task_bytes, max_entry_bytes=settings.max_entry_bytes
            ),
            quota=QuotaLimits(
                max_open_tasks=settings.max_open_tasks,
                max_submissions_per_minute=settings.max_submissions_per_minute,
            ),
        ),
        broker=replace(settings.broker_settings("embedded"), always_lead=True)
        if settings.embedded_broker
        else None,
        middleware_timeout_s=settings.middleware_timeout_s,
        max_boards=settings.max_boards,
        board_idle_s=settings.board_idle_s,
    )


async def serve(
    settings: Settings,
    *,
    handle_signals: bool = False,
    rag_models: ModelCache | None = None,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled (or signalled); signals started with the `ws://host:port` URL.
    `rag_models`: the embedding models to retrieve with (default: a cache of this server's,
    loading each model on first use)."""
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets that say so,
    # and without it Nagle + delayed ACKs add ~40 ms to every small message.
    secret = settings.auth_secret_value()
    if secret is not None:
        try:
            check_secret(secret)
        except AuthError as exc:
            raise ConfigurationError(str(exc)) from exc
    elif not is_loopback(settings.host) and not settings.insecure:
        raise ConfigurationError(
            f"refusing to serve {settings.host} without authentication: set an auth secret "
            "(--auth-secret-file PATH or KANBANMESH_AUTH_SECRET) or pass --insecure"
        )
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from exc
    port = sock.getsockname()[1]
    url = f"ws://{settings.host}:{port}"
    async with AsyncExitStack() as stack:
        store = None
        if settings.persist:
            store = await stack.enter_async_context(
                BoardStore(settings.data_dir / "boards.sqlite3")
            )
        archive = await stack.enter_async_context(
            TaskArchive(settings.data_dir / "archive.sqlite3" if settings.persist else None)
        )
        conversations = await stack.enter_async_context(
            ConversationStore(settings.data_dir / "conversations.sqlite3" if settings.persist else None)
        )
        # One thread for embedding questions: the other core stays with the event loop and
        # the workers (a question embeds in ~13 ms on one thread; two oversubscribe 2 cores).
        collections = await stack.enter_async_context(
            Collections(settings.data_dir / "rag", rag_models or ModelCache(threads=1))
        )
        middlewares: list[Middleware] = [HistoryMiddleware(conversations), RetrievalMiddleware(collections)]
        hub = Hub(store, archive, hub_settings(settings), conversations, middlewares)
        config = uvicorn.Config(
            app=create_app(hub, secret, settings.max_connections_per_subject, settings.queue_timeout_s,
                           collections, max_request_bytes=settings.request_bytes_limit()),
            ws=DirectWebSocketProtocol,  # websockets-sansio, with the board's direct path
            ws_max_size=settings.max_message_bytes,
            ws_ping_interval=20.0,
            ws_ping_timeout=20.0,
            ws_per_message_deflate=False,
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        server = _Server(config)
        async with anyio.create_task_group() as tg:
            await tg.start(hub.start)
            if handle_signals:
                tg.start_soon(_stop_on_signal, server)
            log.info("serving %s", url)
            task_status.started(url)
            try:
                await server.serve(sockets=[sock])
            finally:
                # Cancelled, uvicorn skips its shutdown: its asyncio servers still watch the
                # socket. Closing the socket under them would leave a stale entry in the event
                # loop's selector, and the next socket given the same descriptor number (a
                # server started again in this process) would never be accepted on.
                for listening in getattr(server, "servers", ()):
                    listening.close()
                if sock.fileno() != -1:  # cancelled inside uvicorn's create_server, even
                    asyncio.get_running_loop().remove_reader(sock.fileno())
                sock.close()
                tg.cancel_scope.cancel()


async def _stop_on_signal(server: uvicorn.Server) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: stopping", signal.Signals(signum).name)
            server.should_exit = True
            return
