"""Telling others that something happened: a level-free change signal for tasks that wait,
and a list of listeners, each removable, for callbacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, ParamSpec, Self

import anyio

P = ParamSpec("P")


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


class Subscription:
    """A listener added to `Listeners`: `cancel()` (or leaving a `with` block) removes it."""

    def __init__(self, remove: Callable[[], None]) -> None:
        self._remove = remove

    def cancel(self) -> None:
        """Remove the listener; a second call does nothing."""
        self._remove()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


class Listeners(Generic[P]):
    """Callbacks to call on an event, in the order they were added. `add` returns a
    `Subscription` that removes the callback again; `notify(...)` calls each with its
    arguments; iterating gives them, for a caller that handles each one's failure."""

    def __init__(self) -> None:
        self._listeners: list[Callable[P, None]] = []

    def add(self, listener: Callable[P, None]) -> Subscription:
        self._listeners.append(listener)
        return Subscription(lambda: self.remove(listener))

    def remove(self, listener: Callable[P, None]) -> None:
        """Remove `listener` (the first time it was added); no error if it is not there."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def notify(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Call every listener; one added or removed meanwhile counts from the next call."""
        for listener in tuple(self._listeners):
            listener(*args, **kwargs)

    def __iter__(self) -> Iterator[Callable[P, None]]:
        return iter(tuple(self._listeners))

    def __len__(self) -> int:
        return len(self._listeners)
