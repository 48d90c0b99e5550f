"""A blocking generation read from async code: batching, errors, stopping within one step."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import pytest

from kanbanmesh.board.schema import Usage
from worker.backends.base import Finished
from worker.backends.threaded import ThreadedRun

pytestmark = pytest.mark.anyio


def ticking(steps: int, step_s: float, emitted_after_stop: list[int]) -> Callable[..., Finished]:
    def work(should_stop: Callable[[], bool], emit: Callable[[str], None]) -> Finished:
        for i in range(steps):
            if should_stop():
                return Finished(Usage(completion_tokens=i), "cancelled")
            time.sleep(step_s)  # one "token"
            emit(f"t{i} ")
            if should_stop():
                emitted_after_stop.append(i)
        return Finished(Usage(completion_tokens=steps))

    return work


async def test_everything_arrives_in_order_then_finished() -> None:
    run = ThreadedRun(ticking(20, 0.001, []))
    run.start()
    texts: list[str] = []
    while True:
        batch = await run.take()
        texts += batch.texts
        if batch.finished:
            break
    await run.stop()
    assert "".join(texts) == "".join(f"t{i} " for i in range(20))
    assert batch.finished.usage.completion_tokens == 20


async def test_stop_ends_the_thread_within_one_step() -> None:
    after: list[int] = []
    run = ThreadedRun(ticking(10_000, 0.01, after))
    run.start()
    await run.take()
    started = time.monotonic()
    await run.stop()
    assert time.monotonic() - started < 0.5
    assert len(after) <= 1, "at most the step in progress completes after stop"
    assert not any(t.name == "kanbanmesh-generate" for t in threading.enumerate())


async def test_an_error_in_the_thread_is_raised_by_the_reader() -> None:
    def work(should_stop: Callable[[], bool], emit: Callable[[str], None]) -> Finished:
        emit("partial")
        raise RuntimeError("decode failed")

    run = ThreadedRun(work)
    run.start()
    with anyio.fail_after(5):
        batch = await run.take()
        while batch.error is None:
            batch = await run.take()
    assert isinstance(batch.error, RuntimeError)
    await run.stop()


async def test_a_cancelled_reader_still_stops_the_thread() -> None:
    run = ThreadedRun(ticking(10_000, 0.01, []))
    run.start()
    with anyio.move_on_after(0.05):
        while True:
            await run.take()
    await run.stop()
    assert not any(t.name == "kanbanmesh-generate" for t in threading.enumerate())
