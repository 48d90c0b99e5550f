"""Task graphs through the pre-inference pipeline on a hub (no sockets): a child released by
its parents but cancelled before the pipeline took it keeps nothing of their results in the
server's memory."""

from __future__ import annotations

import anyio
import pytest

from kanbanmesh.board import constants as c
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.templates import result_ref
from kanbanmesh.board.transitions import Column
from kanbanmesh.server.enrichment import Enricher
from tests.rag.test_pipeline import Gate, hub_room, submit, until, where

pytestmark = pytest.mark.anyio


async def test_a_child_cancelled_before_the_pipeline_took_it_leaves_no_results_held() -> None:
    gate = Gate()
    async with hub_room([gate]) as room:
        enricher = room.admit.__self__  # type: ignore[union-attr]
        assert isinstance(enricher, Enricher)
        for i in range(4):  # the pipeline's four places, all taken
            submit(room, f"busy{i}", tag="gate")
        await gate.started.wait()
        submit(room, "p")
        submit(room, "c", prompt=f"use {result_ref('p')}", after=["p"])
        assert where(room, "p")[0] is Column.PREPARED and where(room, "c")[0] is Column.TODO
        room.server_write(lambda board: board.move(
            "p", Column.PREPARED, Column.DONE, PeerRole.WORKER,
            set_fields={c.F_STATUS: "succeeded", c.F_RESULT: "r" * 100_000, c.F_FINISHED_AT: 1.0}))
        await anyio.wait_all_tasks_blocked()  # released: it waits for a place in the pipeline
        room.server_write(lambda board: board.entry("c")[1].__setitem__(c.F_CANCEL, True))
        await until(room, lambda: where(room, "c")[0] is Column.DONE)
        gate.release.set()
        await until(room, lambda: enricher.enriched >= 4)
        await anyio.wait_all_tasks_blocked()
        assert where(room, "c")[1]["status"] == "cancelled"
        assert enricher._results == {}
