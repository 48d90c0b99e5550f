"""Dispatch benchmark: kanbanmesh (server, embedded broker, 4 echo workers) against baselines.

Run from the repository root::

    .venv/bin/python -m bench.dispatch                # kanbanmesh, plus baselines if installed
    PYTHON=.venv/bin/python bash bench/setup.sh       # installs redis-server and Celery first

Measures, with the echo backend at zero delay and everything on loopback:

* latency: one task at a time, from `submit` to the client seeing it in `done`, p50/p99;
* throughput: N tasks submitted at once by 10 clients, tasks/s until every client has seen
  all of its tasks done.

The server and each worker run in their own process (as `kanbanmesh up` runs them); the clients
run in this process, each with its own websocket connection and its own replica of the board.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from typing import Any

import anyio
import httpx

from bench.baselines import (
    BenchResult,
    celery_available,
    redis_available,
    run_celery,
    run_redis_queue,
)
from client_sdk import AsyncClient, Column, KanbanMeshError
from client_sdk._async_client import new_task_id
from kanbanmesh.board.events import ColumnWatch, event_keys


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kanbanmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "kanbanmesh", *args]


def wait_healthy(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Return once the server on `port` answers `/healthz`; raise RuntimeError after
    `timeout_s`, or as soon as `process` (the server's) has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or (process is not None and process.poll() is not None):
            raise RuntimeError(f"no kanbanmesh server answered on port {port}")
        time.sleep(0.05)


@contextmanager
def mesh(workers: int, persist: bool) -> Iterator[str]:
    """Server (+ embedded broker) and `workers` echo worker processes; yields the URL."""
    port = _free_port()
    url = f"ws://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        args = ["serve", "--port", str(port), "--data-dir", data]
        if not persist:
            args.append("--no-persist")
        procs = [subprocess.Popen(_kanbanmesh(*args), stdout=subprocess.DEVNULL)]
        try:
            wait_healthy(port, 30, procs[0])
            for i in range(workers):
                procs.append(subprocess.Popen(
                    _kanbanmesh("worker", "--url", url, "--backend", "echo", "--name", f"bench-{i}"),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
            yield url
        finally:
            stop_processes(procs)


def stop_processes(procs: Sequence[subprocess.Popen[Any]]) -> None:
    """Terminate each process still running, then wait for each (killed after 10 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _latency(url: str, n: int, workers: int) -> list[float]:
    samples = []
    async with AsyncClient(url) as client:
        await client.wait_for_workers(workers, timeout_s=30)
        for i in range(n + 20):
            start = time.perf_counter()
            # As Celery's apply_async: sent, not waiting for the server's disk.
            task = await client.submit(f"latency probe {i}", durable_timeout_s=None)
            await task.wait(timeout_s=30)
            if i >= 20:  # warm-up excluded
                samples.append((time.perf_counter() - start) * 1000)
    return samples


async def _throughput(url: str, total: int, clients: int) -> float:
    per_client = total // clients
    clients_list = [AsyncClient(url) for _ in range(clients)]
    async with AsyncExitStack() as stack:
        for client in clients_list:
            await stack.enter_async_context(client)
        ready = anyio.Event()
        start = 0.0

        async def run(client: AsyncClient, index: int) -> None:
            await ready.wait()
            pending: set[str] = set()
            # Count arrivals in `done` as they happen: rescanning every id on every change
            # would cost the harness more than the mesh. Through Yrs' lazy events: pycrdt's
            # own observer wraps every value of every event first, which cost the 10 clients
            # ~15% of their CPU here, bookkeeping of the harness's and not work of the mesh.
            def arrived(event: Any) -> None:
                pending.difference_update(event_keys(event))

            watch = ColumnWatch(lambda: client.peer.board.column_map(Column.DONE), arrived)
            watch.start()

            async def sweep() -> None:
                # Tasks that finished and left the board before this replica saw them in
                # `done` (archived), or a new generation of the board: look on the board,
                # then ask the archive for a bounded number (the rest next sweep).
                gone = []
                for task_id in list(pending):
                    column = client.peer.board.locate(task_id)
                    if column is Column.DONE:
                        pending.discard(task_id)
                    elif column is None:
                        gone.append(task_id)
                for task_id in gone[:200]:
                    with contextlib.suppress(KanbanMeshError):  # asked again next sweep
                        if await client.archived(task_id) is not None:
                            pending.discard(task_id)

            try:
                for k in range(per_client):
                    task_id = new_task_id()
                    pending.add(task_id)  # before it can possibly be done
                    await client.submit(f"client {index} task {k}", task_id=task_id,
                                        durable_timeout_s=None)
                with anyio.fail_after(max(600.0, total / 20)):
                    resets, progress_at, left = client.peer.resets, time.monotonic(), len(pending)
                    while pending:
                        await client.wait_changed(1.0)
                        if client.peer.resets != resets:  # a new replica: watch its `done`
                            watch.restart()
                            resets = client.peer.resets
                            await sweep()
                        if len(pending) < left:
                            progress_at, left = time.monotonic(), len(pending)
                        elif time.monotonic() - progress_at > 5:
                            await sweep()
                            progress_at = time.monotonic()
            finally:
                watch.stop()

        async with anyio.create_task_group() as tg:
            for index, client in enumerate(clients_list):
                tg.start_soon(run, client, index)
            start = time.perf_counter()
            ready.set()
        elapsed = time.perf_counter() - start
    return per_client * clients / elapsed


def run_kanbanmesh(n_latency: int, n_throughput: int, clients: int, workers: int, persist: bool) -> BenchResult:
    with mesh(workers, persist) as url:
        samples = anyio.run(_latency, url, n_latency, workers)
    with mesh(workers, persist) as url:

        async def warm_then_measure() -> float:
            async with AsyncClient(url) as client:
                await client.wait_for_workers(workers, timeout_s=30)
            return await _throughput(url, n_throughput, clients)

        tps = anyio.run(warm_then_measure)
    q = statistics.quantiles(samples, n=100)
    label = f"kanbanmesh, {workers} echo workers{'' if persist else ', no persistence'}"
    return BenchResult(label, statistics.median(samples), q[98], tps)


def _median_result(rounds: list[BenchResult]) -> BenchResult:
    """One row from several rounds of one system: the median of each number."""
    return BenchResult(
        rounds[0].system,
        statistics.median(r.p50_ms for r in rounds),
        statistics.median(r.p99_ms for r in rounds),
        statistics.median(r.tasks_per_s for r in rounds),
        note="rounds: " + ", ".join(f"{r.p50_ms:.2f} ms / {r.tasks_per_s:.0f}/s" for r in rounds),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-tasks", type=int, default=300)
    parser.add_argument("--throughput-tasks", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5,
                        help="systems run in turn this many times; each number is the median")
    parser.add_argument("--skip-baselines", action="store_true")
    args = parser.parse_args()

    runners: list[Callable[[], BenchResult]] = [
        lambda: run_kanbanmesh(args.latency_tasks, args.throughput_tasks, args.clients, args.workers, True)
    ]
    if not args.skip_baselines:
        if celery_available():
            runners.append(lambda: run_celery(args.latency_tasks, args.throughput_tasks, args.clients))
        else:
            print("(Celery baseline skipped: run `bash bench/setup.sh` to install celery and redis)")
        if redis_available():
            runners.append(
                lambda: run_redis_queue(args.latency_tasks, args.throughput_tasks, args.clients, args.workers)
            )
    # Alternate the systems round by round, so that whatever else the machine does in the
    # meantime weighs on all of them alike.
    rounds: list[list[BenchResult]] = [[] for _ in runners]
    for _ in range(args.rounds):
        for runner, results in zip(runners, rounds, strict=True):
            results.append(runner())
    table = [_median_result(r) for r in rounds]
    print(f"\nmachine: {os.cpu_count()} cores; {args.latency_tasks} latency tasks, "
          f"{args.throughput_tasks} throughput tasks from {args.clients} clients; "
          f"median of {args.rounds} alternating round(s)\n")
    print(f"| {'system':<54} | {'p50 ms':>7} | {'p99 ms':>7} | {'tasks/s':>8} |")
    print(f"|{'-' * 56}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    for r in table:
        print(f"| {r.system:<54} | {r.p50_ms:>7.2f} | {r.p99_ms:>7.2f} | {r.tasks_per_s:>8.0f} |")
    print()
    for r in table:
        print(f"{r.system}: {r.note}")


if __name__ == "__main__":
    main()
