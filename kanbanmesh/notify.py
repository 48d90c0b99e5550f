"""A level-free change signal: many waiters, woken by the next `notify()`."""

from __future__ import annotations

import anyio


class ChangeSignal:
    """Wakes every task waiting in `wait()` on the next `notify()` (never misses one that
    happens after `wait()` was entered)."""

    def __init__(self) -> None:
        # Made when somebody first waits: most notifications (one per board update on the
        # server and on every peer) find nobody waiting, and an `anyio.Event` costs a
        # backend lookup to make.
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self) -> None:
        await self.upcoming().wait()

    def upcoming(self) -> anyio.Event:
        """The event the next `notify()` sets. Taken before reading what it guards, it cannot
        miss a change made while the reader is away (between the read and its wait)."""
        if self._event is None:
            self._event = anyio.Event()
        return self._event
