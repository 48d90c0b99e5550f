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
from kanbanmesh.board.constants import BOARD_NAME_PATTERN
from kanbanmesh.errors import ConfigurationError
from kanbanmesh.notify import Listeners, Subscription
from kanbanmesh.pipeline.base import Middleware
from kanbanmesh.server.archive import TaskArchive
from kanbanmesh.server.conversations import ConversationStore
from kanbanmesh.server.enrichment import Enricher
from kanbanmesh.server.room import BoardRoom, RoomSettings
from kanbanmesh.server.room_view import RoomView
from kanbanmesh.server.store import BoardStore

log = logging.getLogger(__name__)

_BOARD_NAME = re.compile(BOARD_NAME_PATTERN)


@dataclass(frozen=True)
class HubSettings:
    room: RoomSettings = field(default_factory=RoomSettings)
    # None: no embedded broker.
    broker: BrokerSettings | None = field(
        default_factory=lambda: BrokerSettings(name="embedded", always_lead=True)
    )
    middleware_timeout_s: float = 120.0  # a task still enriching after this fails
    # Boards held in memory at once: every board costs a document, a broker and their tasks,
    # and anybody who may open any board name could otherwise make the server hold millions.
    max_boards: int = 1000
    # A board nobody is connected to and no task runs on is unloaded after this long (its
    # document stays in the store; the next use loads it again).
    board_idle_s: float = 300.0


class TooManyBoardsError(ConfigurationError):
    """Raised when a new board would pass `max_boards` and no loaded board is idle."""


@dataclass
class _Loaded:
    room: BoardRoom
    scope: anyio.CancelScope  # the room's tasks: its housekeeping, enricher and broker


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
        self._rooms: dict[str, _Loaded] = {}
        self._brokers: dict[str, Broker] = {}
        self._lock = anyio.Lock()
        self._room_listeners: Listeners[[BoardRoom]] = Listeners()
        self._tg: TaskGroup | None = None

    def on_room(self, listener: Callable[[BoardRoom], None]) -> Subscription:
        """Call `listener(room)` for each room created from now on."""
        return self._room_listeners.add(listener)

    @staticmethod
    def valid_board(name: str) -> bool:
        return bool(_BOARD_NAME.fullmatch(name))

    @property
    def rooms(self) -> dict[str, BoardRoom]:
        return {name: loaded.room for name, loaded in self._rooms.items()}

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
                # even before anybody connects (as many as the limit holds).
                for name in (await self._store.boards())[: self._settings.max_boards]:
                    if self.valid_board(name):
                        await self.room(name)
            tg.start_soon(self._unload_idle)
            task_status.started()
            await anyio.sleep_forever()

    async def room(self, name: str) -> BoardRoom:
        """The room of board `name`, created and loaded on first use; raises
        `TooManyBoardsError` past `max_boards` when no loaded board is idle."""
        if not self.valid_board(name):
            raise ConfigurationError(f"invalid board name {name!r}")
        loaded = self._rooms.get(name)
        if loaded is not None:
            return loaded.room
        async with self._lock:
            loaded = self._rooms.get(name)
            if loaded is not None:
                return loaded.room
            if self._tg is None:
                raise RuntimeError("the hub is not running")
            if len(self._rooms) >= self._settings.max_boards:
                await self._unload_one_idle(min_idle_s=0.0)
            if len(self._rooms) >= self._settings.max_boards:
                raise TooManyBoardsError(
                    f"this server holds {self._settings.max_boards} boards, none of them idle"
                )
            room = BoardRoom(name, self._store, self.archive, self._settings.room, self.conversations)
            self._room_listeners.notify(room)
            scope = await self._tg.start(self._run_room, room)
            self._rooms[name] = _Loaded(room, scope)
            return room

    async def _run_room(self, room: BoardRoom, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        """A room and what runs beside it, in one scope: unloading the board cancels it."""
        async with anyio.create_task_group() as tg:
            await tg.start(room.start)
            # Also without middlewares: it holds the tasks that wait for others (task graphs).
            enricher = Enricher(room, self.middlewares, timeout_s=self._settings.middleware_timeout_s)
            room.admit = enricher.admit
            await tg.start(enricher.run)
            if self._settings.broker is not None:
                broker = Broker(RoomView(room, random.getrandbits(32)), self._settings.broker)
                await tg.start(broker.run)
                self._brokers[room.name] = broker
            task_status.started(tg.cancel_scope)

    async def _unload_idle(self) -> None:
        period = max(1.0, min(60.0, self._settings.board_idle_s / 4))
        while True:
            await anyio.sleep(period)
            async with self._lock:
                while await self._unload_one_idle(min_idle_s=self._settings.board_idle_s):
                    pass

    async def _unload_one_idle(self, min_idle_s: float) -> bool:
        """Unload the board idle longest, if one has been idle `min_idle_s`; the caller holds
        the lock. True when one was unloaded."""
        idle = [(loaded.room.idle_s(), name) for name, loaded in self._rooms.items()]
        candidates = [(seconds, name) for seconds, name in idle if seconds is not None and seconds >= min_idle_s]
        if not candidates:
            return False
        _, name = max(candidates)
        loaded = self._rooms.pop(name)
        self._brokers.pop(name, None)
        await loaded.room.unload()
        loaded.scope.cancel()
        log.info("board %s: idle, unloaded", name)
        return True
