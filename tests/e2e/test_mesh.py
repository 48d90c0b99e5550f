"""End to end on a real server with real websocket clients and echo workers."""

from __future__ import annotations

import json

import anyio
import pytest

from client_sdk import (
    AsyncClient,
    Client,
    Column,
    InvalidTaskError,
    TaskCancelledError,
    TaskHandle,
    TaskStatus,
)
from kanbanmesh.board.schema import TaskParams
from kanbanmesh.peer import BoardPeer
from tests.conftest import WorkerPool, cli
from worker.backends import GenerationRequest, echo_text
from worker.backends.echo import EchoBackend
from worker.service import Worker, WorkerSettings

pytestmark = pytest.mark.anyio

PROMPT = "the quick brown fox jumps over the lazy dog"


def expected(prompt: str) -> str:
    return echo_text(GenerationRequest(messages=None, prompt=prompt, params=TaskParams()))


async def test_submit_stream_done_from_the_sdk(server_url: str, workers: WorkerPool) -> None:
    await workers.start(delay_ms=5)
    async with AsyncClient(server_url, owner="alice") as client:
        task = await client.submit(PROMPT, params={"max_tokens": 100})
        with anyio.fail_after(10):
            chunks = [chunk async for chunk in task.stream()]
            entry = await task.result()
    assert len(chunks) > 3, "output should arrive in pieces"
    assert "".join(chunks) == entry.result == expected(PROMPT)
    assert entry.status is TaskStatus.SUCCEEDED and entry.owner == "alice"
    assert entry.usage is not None and entry.usage.completion_tokens == len(expected(PROMPT).split())
    assert entry.timings is not None and entry.timings.total_ms > 0 and entry.attempt == 1


async def test_messages_and_params_reach_the_backend(server_url: str, workers: WorkerPool) -> None:
    await workers.start()
    async with AsyncClient(server_url) as client:
        task = await client.submit(
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three four"}],
            params={"max_tokens": 3, "stop": ["three"]},
        )
        entry = await task.result(timeout_s=10)
    assert entry.result == "echo: one two "


async def test_blocking_client(server_url: str, workers: WorkerPool) -> None:
    await workers.start(delay_ms=2)

    def use_blocking_client() -> tuple[list[str], str]:
        with Client(server_url) as client:
            client.wait_for_workers(1, timeout_s=10)
            task = client.submit(PROMPT)
            chunks = list(task.stream())
            return chunks, task.result(timeout_s=10).result or ""

    with anyio.fail_after(20):
        chunks, result = await anyio.to_thread.run_sync(use_blocking_client)
    assert "".join(chunks) == result == expected(PROMPT)


async def test_invalid_request_is_refused_by_the_sdk(server_url: str) -> None:
    async with AsyncClient(server_url) as client:
        with pytest.raises(InvalidTaskError, match="max_tokens"):
            await client.submit("x", params={"max_tokens": -5})
        with pytest.raises(InvalidTaskError, match="exactly one"):
            await client.submit()


async def test_cli_submit_board_and_task_show(server_url: str, workers: WorkerPool) -> None:
    await workers.start(delay_ms=1, name="cli-worker")
    with anyio.fail_after(60):
        done = await anyio.run_process(cli("submit", "--url", server_url, PROMPT), check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode() == expected(PROMPT) + "\n"

        as_json = await anyio.run_process(cli("submit", "--url", server_url, "--json", "a b c"), check=False)
        entry = json.loads(as_json.stdout)
        assert entry["status"] == "succeeded" and entry["result"] == "echo: a b c"

        shown = await anyio.run_process(cli("task", "show", entry["id"], "--url", server_url))
        assert json.loads(shown.stdout)["column"] == "done"

        board = await anyio.run_process(cli("board", "--url", server_url), env={"COLUMNS": "200"})
        text = board.stdout.decode()
        assert "done 2" in text and "cli-worker" in text

        bad = await anyio.run_process(cli("submit", "--url", server_url, "x", "--max-tokens", "0"), check=False)
        assert bad.returncode == 1 and b"max_tokens" in bad.stderr

        down = await anyio.run_process(cli("submit", "--url", "ws://127.0.0.1:9", "x"), check=False)
        assert down.returncode == 1 and b"cannot connect" in down.stderr


async def test_cancel_while_streaming_ends_within_200_ms(server_url: str, workers: WorkerPool) -> None:
    await workers.start(delay_ms=40)
    long_prompt = " ".join(f"w{i}" for i in range(200))
    async with AsyncClient(server_url) as client:
        task = await client.submit(long_prompt)
        seen = 0
        with anyio.fail_after(10):
            async for _ in task.stream():
                seen += 1
                if seen == 3:
                    break
            started = anyio.current_time()
            entry = await task.cancel()
        elapsed = anyio.current_time() - started
        assert entry.status is TaskStatus.CANCELLED
        assert elapsed < 0.2, f"cancel took {elapsed * 1000:.0f} ms"
        assert entry.result and long_prompt.startswith(entry.result.removeprefix("echo: ").strip()[:10])
        with pytest.raises(TaskCancelledError):
            await task.result(timeout_s=1)


async def test_cancel_before_any_worker_is_there(server_url: str) -> None:
    async with AsyncClient(server_url) as client:
        task = await client.submit("never runs")
        entry = await task.cancel(timeout_s=5)
    assert entry.status is TaskStatus.CANCELLED


async def test_three_workers_300_tasks_10_clients(server_url: str, workers: WorkerPool) -> None:
    slots = 2
    for i in range(3):
        await workers.start(slots=slots, name=f"w{i}")
    violations: list[str] = []
    results: dict[str, tuple[str, str]] = {}

    async def monitor(client: AsyncClient, stop: anyio.Event) -> None:
        while not stop.is_set():
            held: dict[str, int] = {}
            board = client.peer.board
            for column in (Column.PREPARED, Column.DOING):
                for _, entry in board.entries(column):
                    worker = str(entry.get("worker"))
                    held[worker] = held.get(worker, 0) + 1
            violations.extend(f"{w} holds {n}" for w, n in held.items() if n > slots)
            await client.wait_changed(0.5)

    async def one_client(index: int) -> None:
        async with AsyncClient(server_url, owner=f"c{index}") as client:
            handles = [await client.submit(f"client {index} task {n} says hello") for n in range(30)]

            async def follow(handle: object) -> None:
                text = "".join([c async for c in handle.stream()])  # type: ignore[attr-defined]
                entry = await handle.result()  # type: ignore[attr-defined]
                results[entry.id] = (text, entry.result or "")

            async with anyio.create_task_group() as tg:
                for handle in handles:
                    tg.start_soon(follow, handle)

    with anyio.fail_after(90):
        async with AsyncClient(server_url) as watcher:
            stop = anyio.Event()
            async with anyio.create_task_group() as outer:
                outer.start_soon(monitor, watcher, stop)
                async with anyio.create_task_group() as tg:
                    for i in range(10):
                        tg.start_soon(one_client, i)
                stop.set()
            # converge: the watcher sees every task in done exactly once
            while len(watcher.peer.board.ids(Column.DONE)) < 300:
                await watcher.wait_changed(1.0)
            board = watcher.peer.board
            assert board.counts() == {Column.TODO: 0, Column.PREPARED: 0, Column.DOING: 0, Column.DONE: 300}
            per_worker: dict[str, int] = {}
            for task_id, entry in board.entries(Column.DONE):
                assert entry.get("status") == "succeeded", task_id
                per_worker[str(entry.get("worker"))] = per_worker.get(str(entry.get("worker")), 0) + 1
    assert not violations, violations[:5]
    assert len(results) == 300
    assert all(text == result and result.startswith("echo: client") for text, result in results.values())
    assert len(per_worker) == 3 and min(per_worker.values()) > 30, per_worker
    assert sum(w.completed for w in workers.workers) == 300


async def test_worker_killed_mid_stream_is_requeued_without_duplicated_text(
    server_url: str, workers: WorkerPool
) -> None:
    victim = await anyio.open_process(
        cli("worker", "--url", server_url, "--backend", "echo", "--echo-delay", "25", "--name", "victim"),
        stdout=None, stderr=None,
    )
    try:
        prompt = " ".join(f"word{i}" for i in range(60))
        async with AsyncClient(server_url) as client:
            with anyio.fail_after(20):
                await client.wait_for_workers(1)
                task = await client.submit(prompt)
                chunks: list[str] = []
                stream = task.stream()
                async for chunk in stream:
                    chunks.append(chunk)
                    if len(chunks) == 5:
                        victim.kill()  # SIGKILL, mid-stream
                        await victim.wait()
                        await workers.start(delay_ms=1, name="rescuer")
                        break
                async for chunk in stream:
                    chunks.append(chunk)
                entry = await task.result()
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
    assert entry.attempt == 2, "the task must have been retried once"
    assert entry.worker == workers.workers[0].id
    assert "".join(chunks) == entry.result == expected(prompt)


async def test_worker_awareness_is_seen_at_join_and_removed_at_once(
    server_url: str, workers: WorkerPool
) -> None:
    worker = await workers.start(slots=3, name="present")
    async with AsyncClient(server_url) as client:
        [seen] = client.workers()  # no waiting: sent on join
        assert seen.id == worker.id and seen.slots == 3 and seen.models == ["echo"]
        assert any(p.role.value == "broker" for p in client.snapshot().peers)
        workers.scopes[0].cancel()
        with anyio.fail_after(2):  # not Yjs' 30 s timeout
            while client.workers():
                await client.peer.presence_changed.wait()


async def test_python_and_sdk_clients_share_one_board(server_url: str, workers: WorkerPool) -> None:
    await workers.start()
    async with AsyncClient(server_url) as a, AsyncClient(server_url) as b:
        task = await a.submit("shared")
        entry = await b.task(task.id).result(timeout_s=10)
        assert entry.result == "echo: shared"
        assert b.snapshot().done[0].id == task.id


async def test_cli_up_starts_a_working_mesh(tmp_path: object) -> None:
    from tests.conftest import free_port

    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    async with await anyio.open_process(
        cli("up", "--port", str(port), "--data-dir", str(tmp_path), "--workers", "2", "--backend", "echo")
    ) as up:
        try:
            with anyio.fail_after(60):
                while True:
                    try:
                        async with AsyncClient(url) as client:
                            await client.wait_for_workers(2, timeout_s=30)
                            entry = await (await client.submit("up works")).result()
                            break
                    except Exception:
                        if up.returncode is not None:
                            raise
                        await anyio.sleep(0.2)
            assert entry.result == "echo: up works"
        finally:
            up.terminate()
            with anyio.fail_after(20):
                code = await up.wait()
    assert code in (0, -15), f"up exited with {code}"


async def test_many_waits_at_once_wake_for_their_own_tasks_only(
    server_url: str, workers: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of waits gathered at once: while other tasks' changes stream into the replica,
    the waits do not each look their task up again per change (that cost grows with waits
    times changes), and all of them end once their own tasks finish."""
    looks = 0
    waited: set[str] = set()
    locate = TaskHandle._locate

    def counted(handle: TaskHandle) -> object:
        nonlocal looks
        looks += handle.id in waited  # the batch's, not the noise's own waits
        return locate(handle)

    monkeypatch.setattr(TaskHandle, "_locate", counted)
    await workers.start(delay_ms=10)  # the default model only, a task every ~15 ms
    async with AsyncClient(server_url) as client, AsyncClient(server_url) as other:
        handles = [await client.submit(f"later {i}", model="later", durable_timeout_s=10) for i in range(40)]
        waited = {handle.id for handle in handles}
        finished: list[str] = []

        async def wait(handle: TaskHandle) -> None:
            entry = await handle.wait(30)
            finished.append(entry.result or "")

        async with anyio.create_task_group() as tg:
            for handle in handles:
                tg.start_soon(wait, handle)
            await anyio.wait_all_tasks_blocked()
            looks, heard = 0, client.peer.remote_updates
            with anyio.fail_after(20):
                for i in range(60):  # other tasks run meanwhile: their changes reach `client`
                    await (await other.submit(f"noise {i}")).result()
            heard = client.peer.remote_updates - heard
            assert heard >= 5, "the noise never reached the waiting client"
            # One look per wait and per second at most (the fallback timeout), however many
            # changes arrived; woken per change, it would be 40 per message.
            assert looks <= 40 * 3, (looks, heard)
            # Now a worker for them: every wait ends.
            peer = BoardPeer(server_url, "default")
            late = Worker(peer, EchoBackend(model="later"), WorkerSettings(name="late", slots=4))
            await tg.start(peer.start)
            await tg.start(late.run)
            with anyio.fail_after(20):
                while len(finished) < len(handles):
                    await client.wait_changed(1.0)
            tg.cancel_scope.cancel()
    assert sorted(finished) == sorted(expected(f"later {i}") for i in range(40))
