"""Run code on LibreOffice's main thread from another thread.

Writer's API may be called from any thread (each call takes the office's lock), but dialogs,
the status bar and a smooth redraw want the main thread, and the main thread must never wait
for the network. `com.sun.star.awt.AsyncCallback` queues a call into the main event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import unohelper
from com.sun.star.awt import XCallback

log = logging.getLogger(__name__)


class _Callback(unohelper.Base, XCallback):  # type: ignore[misc]
    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn

    def notify(self, data: Any) -> None:
        try:
            self._fn()
        except Exception:  # an exception must not cross into the office's event loop
            log.exception("kanbanmesh: a main-thread callback failed")


class MainThread:
    """Posts calls to the main thread, in the order they were posted."""

    def __init__(self, ctx: Any) -> None:
        self._callback = ctx.ServiceManager.createInstanceWithContext("com.sun.star.awt.AsyncCallback", ctx)

    def post(self, fn: Callable[[], None]) -> None:
        self._callback.addCallback(_Callback(fn), None)


class Batcher:
    """Collects chunks from a streaming thread and hands them to the main thread in batches:
    at most one drain is queued at a time, however fast the chunks come."""

    def __init__(self, main: MainThread, deliver: Callable[[str], None]) -> None:
        self._main = main
        self._deliver = deliver
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._queued = False

    def add(self, chunk: str) -> None:
        with self._lock:
            self._pending.append(chunk)
            if self._queued:
                return
            self._queued = True
        self._main.post(self.drain)

    def drain(self) -> None:
        """Deliver what is pending (on the main thread; also called once more at the end)."""
        with self._lock:
            text, self._pending, self._queued = "".join(self._pending), [], False
        if text:
            self._deliver(text)
