"""Run a blocking generation in a thread of its own and read what it emits from async code.

The thread never waits for the event loop: it puts items on a `queue.SimpleQueue`, so token
generation goes on while the loop writes the previous token to the board. The reader takes
everything queued at once, so when tokens come faster than the loop can write them they are
written together, one update for several tokens, with no added delay.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from worker.backends.base import Finished

Work = Callable[[Callable[[], bool], Callable[[str], None]], Finished]
"""`work(should_stop, emit) -> Finished`: blocking; calls `emit(text)` as text is produced."""


@dataclass
class Batch:
    """What a run produced since the last look: text pieces, then maybe its end."""

    texts: list[str] = field(default_factory=list)
    finished: Finished | None = None
    error: BaseException | None = None


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ThreadedRun:
    """One run of `work` in a dedicated thread, read batch by batch with `take()`."""

    def __init__(self, work: Work, name: str = "kanbanmesh-generate") -> None:
        self._work = work
        self._queue: queue.SimpleQueue[str | Finished | _Failed] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def start(self) -> None:
        self._thread.start()
        self._started = True

    def _run(self) -> None:
        try:
            self._queue.put(self._work(self._stop.is_set, self._queue.put))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            self._queue.put(_Failed(exc))
        finally:
            self._done.set()

    async def take(self) -> Batch:
        """Everything queued since the last call; waits (off the loop) for at least one item."""
        try:
            first = self._queue.get_nowait()
        except queue.Empty:
            # If this wait is cancelled, the abandoned thread still receives the run's last
            # item (every run ends with one), so it never stays blocked.
            first = await anyio.to_thread.run_sync(
                self._queue.get, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
            )
        batch = Batch()
        item: str | Finished | _Failed | None = first
        while item is not None:
            if isinstance(item, str):
                batch.texts.append(item)
            elif isinstance(item, Finished):
                batch.finished = item
            else:
                batch.error = item.error
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None
        return batch

    async def stop(self) -> None:
        """Ask the work to stop and wait until its thread has ended, even when cancelled."""
        self._stop.set()
        if not self._started or self._done.is_set():
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._done.wait, limiter=anyio.CapacityLimiter(1))
