"""The hub: every board room of one server, their store, and the embedded brokers."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup, TaskStatus

from broker.service import Broker, BrokerSettings
from broker.view import RoomView
from kanbanmesh.errors import ConfigurationError
from kanbanmesh.pipeline.base import Middleware
from kanbanmesh.server.archive import TaskArchive
from kanbanmesh.server.conversations import ConversationStore
from kanbanmesh.server.enrichment import Enricher
from kanbanmesh.server.room import BoardRoom, RoomSettings
from kanbanmesh.server.store import BoardStore
from kanbanmesh.settings import BOARD_NAME_PATTERN

log = logging.getLogger(__name__)

_BOARD_NAME = re.compile(BOARD_NAME_PATTERN)


@dataclass(frozen=True)
class HubSettings:
    room: RoomSettings = field(default_factory=RoomSettings)
    # None: no embedded broker.
    broker: BrokerSettings | None = field(default_factory=lambda: BrokerSettings(name="embedded"))
    middleware_timeout_s: float = 120.0  # a task still enriching after this fails


class Hub:
    """Creates rooms on first use, loads them from the store, runs their brokers."""

    def __init__(
        self, store: BoardStore | None, archive: TaskArchive, settings: HubSettings,
        conversations: ConversationStore | None = None, middlewares: Sequence[Middleware] = (),
    ) -> None:
        """`middlewares`: the pre-inference pipeline every new task goes through, in order."""
        self._store = store
        self.archive = archive
        self.conversations = conversations
        self.middlewares = list(middlewares)
        self._settings = settings
        self._rooms: dict[str, BoardRoom] = {}
        self._brokers: dict[str, Broker] = {}
        self._lock = anyio.Lock()
        self._room_listeners: list[Callable[[BoardRoom], None]] = []
        self._tg: TaskGroup | None = None

    def on_room(self, listener: Callable[[BoardRoom], None]) -> None:
        """Call `listener(room)` for each room created from now on."""
        self._room_listeners.append(listener)

    @staticmethod
    def valid_board(name: str) -> bool:
        return bool(_BOARD_NAME.match(name))

    @property
    def rooms(self) -> dict[str, BoardRoom]:
        return dict(self._rooms)

    @property
    def unflushed_writes(self) -> int:
        """Updates applied but not yet committed to disk (0 without a store)."""
        return self._store.unflushed if self._store is not None else 0

    def broker(self, board: str) -> Broker | None:
        return self._brokers.get(board)

    async def start(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self._store is not None:
                # Boards with history get their broker back at once, so their queues move
                # even before anybody connects.
                for name in await self._store.boards():
                    if self.valid_board(name):
                        await self.room(name)
            task_status.started()
            await anyio.sleep_forever()

    async def room(self, name: str) -> BoardRoom:
        """The room of board `name`, created and loaded on first use."""
        if not self.valid_board(name):
            raise ConfigurationError(f"invalid board name {name!r}")
        room = self._rooms.get(name)
        if room is not None:
            return room
        async with self._lock:
            room = self._rooms.get(name)
            if room is not None:
                return room
            if self._tg is None:
                raise RuntimeError("the hub is not running")
            room = BoardRoom(name, self._store, self.archive, self._settings.room, self.conversations)
            for listener in self._room_listeners:
                listener(room)
            await self._tg.start(room.start)
            if self.middlewares:
                enricher = Enricher(room, self.middlewares, timeout_s=self._settings.middleware_timeout_s)
                room.admit = enricher.admit
                await self._tg.start(enricher.run)
            self._rooms[name] = room
            if self._settings.broker is not None:
                broker = Broker(RoomView(room, random.getrandbits(32)), self._settings.broker)
                await self._tg.start(broker.run)
                self._brokers[name] = broker
            return room
