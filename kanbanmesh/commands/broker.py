"""`kanbanmesh broker`: a standalone broker, an ordinary privileged client of the server."""

from __future__ import annotations

import signal

import anyio
import click

from broker.service import Broker, BrokerSettings
from broker.view import PeerView
from kanbanmesh.peer import BoardPeer
from kanbanmesh.settings import Settings


async def run_broker_async(settings: Settings) -> None:
    async with BoardPeer(settings.url, settings.board, token=settings.token,
                         max_message_bytes=settings.max_message_bytes) as peer:
        broker = Broker(
            PeerView(peer),
            BrokerSettings(max_attempts=settings.max_attempts,
                           orphan_grace_s=settings.orphan_grace_s, name="standalone"),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(broker.run)
            click.echo(f"broker {broker.id} serving {settings.url}/{settings.board}", err=True)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            tg.cancel_scope.cancel()


def run_broker(settings: Settings) -> None:
    anyio.run(run_broker_async, settings)
