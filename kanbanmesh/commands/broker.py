"""`kanbanmesh broker`: a standalone broker, an ordinary privileged client of the server.

Several may serve one board: the oldest present one leads, the others stand by (see
`broker.election`). A broker that loses its connection starts over with a fresh replica
instead of reconnecting with the old one: whatever it wrote while cut off (an assignment
another broker may have made differently since) must never reach the board late.
"""

from __future__ import annotations

import logging
import signal

import anyio
import click

from broker.service import Broker
from broker.view import PeerView
from kanbanmesh.errors import ConnectError, ConnectionClosedError, KanbanMeshError
from kanbanmesh.peer import BoardPeer
from kanbanmesh.settings import Settings

log = logging.getLogger(__name__)


async def run_broker_async(settings: Settings) -> None:
    delay = 0.2
    while True:
        try:
            await _serve_once(settings)
            return  # signalled
        except* (ConnectError, ConnectionClosedError) as group:
            click.echo(f"broker: {group.exceptions[0]}; starting over", err=True)
        await anyio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _serve_once(settings: Settings) -> None:
    peer = BoardPeer(settings.url, settings.board, token=settings.token,
                     max_message_bytes=settings.max_message_bytes, reconnect=False)
    async with anyio.create_task_group() as tg:
        await tg.start(peer.start)
        broker = Broker(PeerView(peer), settings.broker_settings("standalone"))
        await tg.start(broker.run)
        click.echo(f"broker {broker.id} serving {settings.url}/{settings.board}", err=True)
        tg.start_soon(_fail_with_peer, peer)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()


async def _fail_with_peer(peer: BoardPeer) -> None:
    while True:
        error: KanbanMeshError | None = peer.error
        if error is not None:
            raise error
        await peer.changed.wait()


def run_broker(settings: Settings) -> None:
    anyio.run(run_broker_async, settings)
