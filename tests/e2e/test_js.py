"""Stock JavaScript clients (yjs + y-websocket from npm, run by node) against the server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anyio
import pytest

from client_sdk import AsyncClient, TaskStatus
from tests.conftest import WorkerPool

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
]


async def node(js_dir: Path, script: str, *args: str, timeout_s: float = 30) -> tuple[int, list[dict[str, object]]]:
    with anyio.fail_after(timeout_s):
        done = await anyio.run_process(["node", str(js_dir / script), *args], cwd=js_dir, check=False)
    events = [json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")]
    return done.returncode, events


async def test_js_client_submits_and_streams(server_url: str, workers: WorkerPool, js_dir: Path) -> None:
    await workers.start(delay_ms=5)
    code, events = await node(js_dir, "submit.mjs", "--url", server_url, "--prompt", "hello from javascript land")
    assert code == 0, events
    done = events[-1]
    chunks = [e["text"] for e in events if e["event"] == "chunk"]
    assert done["event"] == "done" and done["status"] == "succeeded"
    assert done["result"] == "echo: hello from javascript land" == done["streamed"] == "".join(chunks)  # type: ignore[operator]
    assert len(chunks) > 1


async def test_python_sees_a_js_task_and_js_sees_a_python_task(
    server_url: str, workers: WorkerPool, js_dir: Path
) -> None:
    await workers.start(delay_ms=5)
    async with AsyncClient(server_url) as client:
        # JS submits; Python follows it by id
        code, events = await node(js_dir, "submit.mjs", "--url", server_url, "--prompt", "js task", "--id", "js-task-1")
        assert code == 0
        entry = await client.task("js-task-1").result(timeout_s=10)
        assert entry.result == "echo: js task" and entry.owner == "js"
        # Python submits; JS follows it by id
        task = await client.submit("python task", params={"max_tokens": 10})
        async with anyio.create_task_group() as tg:
            results: list[tuple[int, list[dict[str, object]]]] = []

            async def watch() -> None:
                results.append(await node(js_dir, "watch.mjs", "--url", server_url, "--id", task.id))

            tg.start_soon(watch)
        code, events = results[0]
        assert code == 0 and events[-1]["result"] == "echo: python task" == events[-1]["streamed"]


async def test_js_sees_workers_in_awareness(server_url: str, workers: WorkerPool, js_dir: Path) -> None:
    await workers.start(name="js-visible", slots=2)
    code, events = await node(js_dir, "workers.mjs", "--url", server_url, "--expect", "1")
    assert code == 0
    [listing] = events
    assert "js-visible" in json.dumps(listing)


async def test_js_cancel(server_url: str, workers: WorkerPool, js_dir: Path) -> None:
    await workers.start(delay_ms=30)
    prompt = " ".join(f"w{i}" for i in range(100))
    code, events = await node(js_dir, "submit.mjs", "--url", server_url, "--prompt", prompt, "--cancel-after-chars", "20")
    assert code == 2 and events[-1]["status"] == TaskStatus.CANCELLED.value


async def test_js_invalid_task_is_refused_with_a_reason(server_url: str, workers: WorkerPool, js_dir: Path) -> None:
    await workers.start()
    code, events = await node(js_dir, "garbage.mjs", "--url", server_url, "--mode", "invalid-task")
    assert code == 0, events
    closed = events[-1]
    assert closed["event"] == "closed" and closed["code"] == 4422 and "invalid" in str(closed["reason"])
    async with AsyncClient(server_url) as client:  # the server carries on
        assert (await (await client.submit("still fine")).result(timeout_s=10)).result == "echo: still fine"


async def test_js_client_submits_a_task_graph(server_url: str, workers: WorkerPool, js_dir: Path) -> None:
    await workers.start(slots=2, delay_ms=10)
    code, events = await node(js_dir, "graph.mjs", "--url", server_url, "--parts", "3")
    submitted, done = events[0], events[-1]
    assert code == 0 and done["event"] == "done", events
    parts = submitted["ids"]
    assert isinstance(parts, list) and len(parts) == 3
    assert done["parents"] == {p: f"echo: part {n}" for n, p in enumerate(parts, start=1)}
    assert done["result"] == "echo: combine: " + " | ".join(f"echo: part {n}" for n in (1, 2, 3))
    assert done["after_results"] == done["parents"]
    assert done["early"] == []  # never assigned before its parents succeeded
    assert done["waited"] == [["after"]]  # the board shows it waiting


async def test_js_graph_with_a_cancelled_part_is_cancelled(server_url: str, js_dir: Path) -> None:
    # No worker: the parts wait in todo; cancelling one cancels the combining task.
    code, events = await node(js_dir, "graph.mjs", "--url", server_url, "--parts", "2", "--cancel-part", "2")
    done = events[-1]
    assert code == 2 and done["event"] == "done" and done["status"] == "cancelled", events
    assert isinstance(done["error"], dict) and done["error"]["code"] == "dependency_failed"
    assert "was cancelled" in str(done["error"]["message"]) and done["worker"] is None
