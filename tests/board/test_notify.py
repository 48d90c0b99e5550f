"""`ChangeSignal`: every waiter wakes on the next notification, none on an earlier one."""

from __future__ import annotations

import anyio
import pytest

from kanbanmesh.notify import ChangeSignal

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
