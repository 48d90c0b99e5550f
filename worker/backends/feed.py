"""Items a thread hands to one async reader, without either waiting on the other.

The llama engine's thread emits a job's text pieces and its end; the task that streams them
reads everything there is at once (several tokens become one board update when the loop is
busy). The thread only appends and, at most once per batch of items, schedules a wake-up on the
event loop (`call_soon_threadsafe`: the project runs on anyio's asyncio backend). A reader that
is cancelled while waiting consumes nothing: the items stay for the next read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Feed(Generic[T]):
    """Make it on the event loop; `put` from any thread, `take` on the loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()
        self._wake_scheduled = False

    def put(self, item: T) -> None:
        self._items.append(item)  # deque.append is atomic
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        self._ready.set()

    async def take(self) -> list[T]:
        """Everything put since the last call; waits for at least one item."""
        while not self._items:
            self._ready.clear()
            if self._items:
                break
            await self._ready.wait()
        taken = []
        while self._items:
            taken.append(self._items.popleft())
        return taken
