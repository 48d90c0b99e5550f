"""When a worker writes a task's move to `doing`: as soon as it yields to the event loop, with
the text produced until then; a task answered without yielding goes `prepared -> done` in one
write (worker/service.py). And a broker skips its passes while no worker has a free slot."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pycrdt import Map, Text

from broker import Broker, BrokerSettings, PeerView
from client_sdk import AsyncClient, Column, TaskStatus
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import now_ms
from kanbanmesh.board.events import event_keys, observe_events
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.e2e.backend_workers import running_worker
from worker.backends.base import GenerationEvent, GenerationRequest, TextChunk
from worker.backends.echo import EchoBackend

pytestmark = pytest.mark.anyio


class GatedBackend(EchoBackend):
    """The echo backend, each answer held at `gate`, after yielding `lead` first if given."""

    def __init__(self, lead: str = "") -> None:
        super().__init__()
        self.lead = lead
        self.gate = anyio.Event()
        self.waiting = anyio.Event()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if self.lead:
            yield TextChunk(self.lead)
        self.waiting.set()
        await self.gate.wait()
        async for event in super().generate(request):
            yield event


async def test_an_answer_complete_without_yielding_goes_prepared_to_done_in_one_write(server_url: str) -> None:
    async with AsyncClient(server_url) as client, running_worker(server_url, EchoBackend()) as worker:
        started: list[str] = []
        doing = worker._peer.board.column_map(Column.DOING)
        subscription = observe_events(
            doing, lambda event: started.extend(k for k, ch in event_keys(event).items() if ch["action"] == "add")
        )
        await client.wait_for_workers(1, timeout_s=10)
        with anyio.fail_after(10):
            before = now_ms()
            handle = await client.submit("one write")
            pieces = [piece async for piece in handle.stream()]
            entry = await handle.result()
            after = now_ms()
        doing.unobserve(subscription)
    assert started == [], "the worker wrote a `doing` copy it did not need"
    assert "".join(pieces) == entry.result == "echo: one write"
    assert entry.status is TaskStatus.SUCCEEDED
    assert entry.started_at is not None and entry.finished_at is not None and entry.timings is not None
    assert before <= entry.started_at <= entry.finished_at <= after  # one machine, one clock
    assert entry.timings.total_ms == entry.finished_at - entry.started_at


async def test_the_start_is_written_when_the_worker_yields_with_the_text_so_far(server_url: str) -> None:
    backend = GatedBackend(lead="first ")
    async with AsyncClient(server_url) as client, running_worker(server_url, backend):
        await client.wait_for_workers(1, timeout_s=10)
        with anyio.fail_after(10):
            handle = await client.submit("gated")
            await backend.waiting.wait()
            # The backend waits: the start has gone out, holding the first piece.
            while True:
                column, entry = client.peer.board.entry(handle.id)
                output: Any = entry.get(c.F_OUTPUT) if isinstance(entry, Map) else None
                if column is Column.DOING and isinstance(output, Text) and str(output) == "first ":
                    break
                await client.wait_changed(1.0)
            assert entry.get(c.F_STARTED_AT) is not None
            backend.gate.set()
            result = await handle.result()
    assert result.result == "first echo: gated"



async def test_a_broker_with_every_slot_taken_skips_passes_until_one_frees(tmp_path: Path) -> None:
    """New tasks while the only slot is busy cost the broker no pass; the slot freeing (its
    task leaving `doing`) brings one, which assigns the next task at once."""
    settings = Settings(port=0, data_dir=tmp_path, embedded_broker=False)
    backend = GatedBackend()
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        peer = BoardPeer(url)
        await tg.start(peer.start)
        broker = Broker(PeerView(peer), BrokerSettings(name="standalone"))
        await tg.start(broker.run)
        async with running_worker(url, backend), AsyncClient(url) as client:
            await client.wait_for_workers(1, timeout_s=10)
            with anyio.fail_after(20):
                first = await client.submit("first")
                await backend.waiting.wait()
                # Settled: the broker has seen the task started and the worker announce itself
                # busy (either brings it a pass of its own, rightly).
                while first.id not in peer.board.ids(Column.DOING) or not any(
                    state.get(c.A_STATE) == "working" for state in peer.peers().values()
                ):
                    with anyio.move_on_after(0.1):
                        await peer.changed.wait()
                passes = broker.stats.passes
                rest = [await client.submit(f"queued {i}") for i in range(5)]
                while len(peer.board.ids(Column.TODO)) < 5:  # the broker's replica has them
                    await peer.changed.wait()
                assert broker.stats.passes - passes <= 1, "passes ran with no slot free"
                backend.gate.set()
                results = [await handle.result() for handle in (first, *rest)]
        tg.cancel_scope.cancel()
    assert [r.result for r in results] == ["echo: first", *(f"echo: queued {i}" for i in range(5))]
