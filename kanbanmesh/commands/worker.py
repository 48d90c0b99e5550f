"""`kanbanmesh worker`."""

from __future__ import annotations

import logging
import signal

import anyio
import click

from kanbanmesh.errors import ConnectError
from kanbanmesh.peer import BoardPeer
from kanbanmesh.settings import Settings
from worker.backends.base import Backend
from worker.backends.echo import EchoBackend
from worker.service import Worker, WorkerSettings

log = logging.getLogger(__name__)


def make_backend(settings: Settings) -> Backend:
    """The backend named by `--backend`, configured from the settings."""
    return EchoBackend(delay_ms=settings.echo_delay_ms)


async def run_worker_async(settings: Settings) -> None:
    worker_settings = WorkerSettings(name=settings.name, slots=settings.slots)
    delay = 0.2
    while True:
        peer = BoardPeer(settings.url, settings.board, token=settings.token,
                         max_message_bytes=settings.max_message_bytes)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(peer.start)
                worker = Worker(peer, make_backend(settings), worker_settings)
                await tg.start(worker.run)
                click.echo(
                    f"worker {worker.name} ({worker.id}) serving {settings.url}/{settings.board} "
                    f"with {settings.slots} slot(s)", err=True,
                )
                tg.start_soon(_stop_on_signal, tg.cancel_scope)
            return
        except* ConnectError as group:
            log.warning("server not reachable (%s); retrying", group.exceptions[0])
            click.echo(f"waiting for the server at {settings.url} ...", err=True)
        await anyio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


def run_worker(settings: Settings) -> None:
    anyio.run(run_worker_async, settings)
