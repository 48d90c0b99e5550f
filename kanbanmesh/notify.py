"""A level-free change signal: many waiters, woken by the next `notify()`."""

from __future__ import annotations

import anyio


class ChangeSignal:
    """Wakes every task waiting in `wait()` on the next `notify()` (never misses one that
    happens after `wait()` was entered)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        event, self._event = self._event, anyio.Event()
        event.set()

    async def wait(self) -> None:
        await self._event.wait()

    def upcoming(self) -> anyio.Event:
        """The event the next `notify()` sets. Taken before reading what it guards, it cannot
        miss a change made while the reader is away (between the read and its wait)."""
        return self._event
