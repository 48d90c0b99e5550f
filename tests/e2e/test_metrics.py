"""`/metrics` in Prometheus' text format: parsed with prometheus_client, moving as tasks run."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client_sdk import AsyncClient, Column
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from kanbanmesh.wire.kpis import kpis
from tests.conftest import WorkerPool, cli

pytestmark = pytest.mark.anyio


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(base_url="http" + url[2:]) as http:
        reply = await http.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_as_tasks_run(tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, Settings(port=0, data_dir=tmp_path))
        await WorkerPool(url, tg).start(slots=2, name="metered")
        async with AsyncClient(url) as client:
            await client.wait_for_workers(1)
            before = await scrape(url)
            with anyio.fail_after(20):
                for i in range(5):
                    await (await client.submit(f"count me {i}")).result()
                queued = await client.submit("stays queued", model="no-such-model")
            after = await scrape(url)
            await queued.cancel()
        tg.cancel_scope.cancel()
    finished = "kanbanmesh_tasks_finished_total"
    assert value(after, finished, board="default", status="succeeded", model="any") - \
        value(before, finished, board="default", status="succeeded", model="any") == 5
    assert value(after, "kanbanmesh_tokens_generated_total", board="default", model="any") >= 5 * 3
    assert value(after, "kanbanmesh_task_duration_seconds_count", board="default", model="any") == 5
    assert value(after, "kanbanmesh_time_to_first_token_seconds_count", board="default", model="any") == 5
    assert value(after, "kanbanmesh_tasks", board="default", column="todo") == 1
    assert value(after, "kanbanmesh_tasks", board="default", column="done") >= 5
    assert value(after, "kanbanmesh_workers", board="default", state="ready") == 1
    assert value(after, "kanbanmesh_worker_slots", board="default") == 2
    assert value(after, "kanbanmesh_connections", board="default") >= 2
    assert value(after, "kanbanmesh_updates_applied", board="default") > \
        value(before, "kanbanmesh_updates_applied", board="default")


async def test_key_figures_of_past_work_come_from_the_board_and_the_archive(tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, Settings(port=0, data_dir=tmp_path, retention_s=0))
        await WorkerPool(url, tg).start(delay_ms=2)
        async with AsyncClient(url) as client:
            with anyio.fail_after(20):
                for i in range(4):
                    await (await client.submit(f"kpi {i}")).result()
                while client.peer.board.ids(Column.DONE):  # all archived (retention 0)
                    await client.wait_changed(0.5)
                late = await client.submit("on the board")
                await late.result()
                figures = await client.stats(since_s=600)
                nothing = await client.stats(since_s=0.001)
            shown = await anyio.run_process(cli("stats", "--url", url, "--since", "10m"))
        tg.cancel_scope.cancel()
    assert figures.finished >= 5 and figures.by_status.get("succeeded", 0) >= 5
    assert figures.ttft_ms.count >= 5 and figures.total_ms.p50 > 0 and figures.completion_tokens > 0
    assert nothing.finished <= 1
    table = shown.stdout.decode()
    assert "finished in the last 10m" in table and "first token ms" in table


def test_key_figures_skip_values_an_older_archive_may_hold() -> None:
    """An archived entry of an older version may hold anything: the figures leave out what is
    not a finite number instead of failing (or answering infinity, which JSON cannot carry)."""
    now = 2_000_000_000_000.0
    entries = [
        {"status": "succeeded", "finished_at": now, "usage": {"completion_tokens": 5},
         "timings": {"queued_ms": 10.0, "ttft_ms": 2.0, "total_ms": 30.0, "tokens_per_s": 50.0}},
        {"status": "failed", "finished_at": now, "usage": {"completion_tokens": float("inf")},
         "timings": {"queued_ms": float("nan"), "ttft_ms": "fast", "total_ms": float("inf")}},
        {"status": "succeeded", "finished_at": float("nan")},
        {"status": "succeeded", "finished_at": "yesterday"},
    ]
    figures = kpis(entries, now - 1000.0)
    assert figures.finished == 2 and figures.completion_tokens == 5
    assert figures.total_ms.count == 1 and figures.total_ms.max == 30.0
    json.dumps(figures.model_dump(), allow_nan=False)
