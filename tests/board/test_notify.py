"""`ChangeSignal`: every waiter wakes on the next notification, none on an earlier one.
`Listeners`: each listener is called until its subscription is cancelled."""

from __future__ import annotations

import anyio
import pytest

from kanbanmesh.notify import ChangeSignal, Listeners

pytestmark = pytest.mark.anyio


async def test_every_waiter_wakes_on_the_next_notify() -> None:
    signal = ChangeSignal()
    signal.notify()  # nobody waits: nothing to remember
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await signal.wait()
        woken.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(waiter, n)
        await anyio.wait_all_tasks_blocked()
        assert woken == []  # the notify before they waited does not count
        signal.notify()
    assert sorted(woken) == [0, 1, 2]


async def test_an_upcoming_event_taken_before_a_notify_is_set_by_it() -> None:
    signal = ChangeSignal()
    upcoming = signal.upcoming()
    assert signal.upcoming() is upcoming  # the same until a notify
    signal.notify()
    assert upcoming.is_set()
    later = signal.upcoming()
    assert later is not upcoming and not later.is_set()
    with anyio.fail_after(1):
        await upcoming.wait()  # set: returns at once


def test_listeners_are_called_in_order_until_cancelled() -> None:
    listeners: Listeners[[str]] = Listeners()
    calls: list[tuple[str, str]] = []
    first = listeners.add(lambda x: calls.append(("first", x)))
    with listeners.add(lambda x: calls.append(("second", x))):
        listeners.notify("a")
    listeners.notify("b")  # the second left with its block
    first.cancel()
    first.cancel()  # a second cancel does nothing
    listeners.notify("c")
    assert calls == [("first", "a"), ("second", "a"), ("first", "b")]
    assert len(listeners) == 0


def test_a_listener_cancelled_during_a_notify_is_called_no_more_from_the_next() -> None:
    listeners: Listeners[[]] = Listeners()
    calls: list[str] = []

    def cancel_other() -> None:
        calls.append("canceller")
        other.cancel()

    listeners.add(cancel_other)
    other = listeners.add(lambda: calls.append("other"))
    listeners.notify()
    listeners.notify()
    assert calls == ["canceller", "other", "canceller"]
