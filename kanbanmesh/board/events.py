"""Observing a board's maps, and typed reading of their change events.

`observe_events` subscribes like pycrdt's `observe` / `observe_deep`, with one difference: the
callback gets Yrs' own events, whose attributes are computed when read. pycrdt's wrapper
computes every attribute of every event first (the target, the keys with their old and new
values, the path) and wraps every shared type in them, whether the callback reads them or
not: on the server, which observes each column several times over (the update check, the
room, the embedded broker, the retention index), that was ~0.3 ms per task. Values from an
event's keys come out of `change_value` wrapped as pycrdt would.

Like `kanbanmesh.board.reads`, this goes one level below pycrdt's public API (`integrated`,
`Doc._read_transaction`, `Doc._exceptions`, `process_event`), which is why pycrdt is pinned to
one version; tests/board/test_events.py holds it to pycrdt's own observers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pycrdt import Map, MapEvent, Subscription, Text
from pycrdt._base import process_event
from pycrdt._pycrdt import MapEvent as _YrsMapEvent


def observe_events(
    ymap: Map[Any] | Text, callback: Callable[[Any], None], *, deep: bool = False
) -> Subscription:
    """`ymap.observe(callback)` (or `observe_deep`), handing the callback Yrs' lazy events;
    read them with `event_keys`, `event_path`, `is_map_event` and `change_value` (a text's
    event: its `delta`). Unsubscribe with `ymap.unobserve(subscription)`."""
    doc = ymap.doc

    def on_events(events: Any) -> None:
        first = events[0] if deep else events
        # As pycrdt's own wrapper: reads inside the callback use the update's transaction, and
        # an exception surfaces when the transaction ends rather than inside Yrs.
        with doc._read_transaction(first.transaction):
            try:
                callback(events)
            except Exception as exc:  # noqa: BLE001 - re-raised by pycrdt at the transaction's end
                doc._exceptions.append(exc)

    integrated = ymap.integrated
    subscription: Subscription = (integrated.observe_deep if deep else integrated.observe)(on_events)
    ymap._subscriptions.append(subscription)
    return subscription


def is_map_event(event: Any) -> bool:
    """Whether `event` is a change of a map (not of a text or an array)."""
    return isinstance(event, _YrsMapEvent | MapEvent)


def event_keys(event: Any) -> dict[str, dict[str, Any]]:
    """A map event's changed keys: `{key: {"action": "add"|"update"|"delete", ...}}`; read the
    values with `change_value`."""
    keys: dict[str, dict[str, Any]] = event.keys
    return keys


def event_path(event: Any) -> list[str | int]:
    """Where the changed type sits below the observed one (`[]` for the observed one itself)."""
    return list(event.path)


def change_value(change: dict[str, Any], ymap: Map[Any], which: str = "newValue") -> Any:
    """A value of one key's change, shared types wrapped as pycrdt's (`ymap`: any map of the
    document, for its `doc`)."""
    return process_event(change.get(which), ymap.doc)


class ColumnWatch:
    """`observe_events` (`deep` or not) on a map a peer finds through `ymap_of()` (a column of
    its replica), taken up again on the new replica after a board rotation (`restart`), and
    let go of by `stop`: Yrs holds the callback, the callback its owner, the owner the peer
    and its document, a cycle Python's collector cannot see, so an owner that never stops keeps
    the whole replica alive (see `BoardPeer.stop`)."""

    def __init__(
        self, ymap_of: Callable[[], Map[Any]], callback: Callable[[Any], None], *, deep: bool = False
    ) -> None:
        self._ymap_of = ymap_of
        self._callback = callback
        self._deep = deep
        self._watch: tuple[Map[Any], Subscription] | None = None

    @property
    def running(self) -> bool:
        return self._watch is not None

    def start(self) -> None:
        ymap = self._ymap_of()
        self._watch = (ymap, observe_events(ymap, self._callback, deep=self._deep))

    def stop(self) -> None:
        if self._watch is not None:
            ymap, subscription = self._watch
            ymap.unobserve(subscription)
            self._watch = None

    def restart(self) -> None:
        """Follow the current replica's map instead, if running."""
        if self._watch is not None:
            self.stop()
            self.start()
