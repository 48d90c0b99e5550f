"""Board growth benchmark: is a board that ran many tasks as light as one that ran few?

Run from the repository root::

    .venv/bin/python -m bench.board_growth                     # 1,000 vs 100,000 tasks
    .venv/bin/python -m bench.board_growth --small 200 --large 5000   # a quick look

For each size, in a fresh data directory: `kanbanmesh serve` (embedded broker, persistence on,
`--retention-seconds 20`, `--rotate-idle-seconds 3`) and 4 echo workers in their own
processes; 10 clients submit the tasks at once and wait for them all. Then, once the board is
at rest (every task archived, and the server has started a new document generation if enough
tasks left), it measures:

* the encoded size of the board document (what a new client downloads),
* the server's resident memory,
* how long a new Python client (the SDK) and a new JavaScript client (stock yjs +
  y-websocket, `tests/js/sync_time.mjs`) take to connect and sync, median of 5 each.

Target (the reliability issue): size and sync times of the large board within 10% of the small.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from bench.dispatch import _free_port, _throughput
from client_sdk import AsyncClient

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "tests" / "js"


@dataclass(frozen=True)
class Growth:
    tasks: int
    doc_bytes: int
    rss_mb: float
    py_sync_ms: float
    js_sync_ms: float
    generation: int
    run_s: float


def _kanbanmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "kanbanmesh", *args]


@contextmanager
def mesh(data: Path, workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    server = subprocess.Popen(
        _kanbanmesh("serve", "--port", str(port), "--data-dir", str(data),
                    "--retention-seconds", "20", "--rotate-idle-seconds", "3"),
        stdout=subprocess.DEVNULL,
    )
    procs = [server]
    try:
        health(port, timeout_s=30)
        url = f"ws://127.0.0.1:{port}"
        for i in range(workers):
            procs.append(subprocess.Popen(
                _kanbanmesh("worker", "--url", url, "--backend", "echo", "--name", f"growth-{i}"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        yield url, server
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def health(port: int, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reply = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            if reply.status_code == 200:
                return dict(reply.json())
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def at_rest(url: str, timeout_s: float) -> int:
    """Wait until the board holds no task and its generation stopped changing; returns it."""
    port = int(url.rsplit(":", 1)[1])
    with anyio.fail_after(timeout_s):
        while True:
            async with AsyncClient(url) as client:
                empty = not any(client.peer.board.counts().values())
            generation = dict(health(port, 10)["generations"]).get("default", 0)  # type: ignore[arg-type]
            await anyio.sleep(5)  # longer than the idle rotation delay: is it still the same?
            again = dict(health(port, 10)["generations"]).get("default", 0)  # type: ignore[arg-type]
            if empty and generation == again:
                return int(again)


async def python_sync(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    async with AsyncClient(url) as client:
        elapsed = (time.perf_counter() - start) * 1000
        size = len(client.peer.doc.get_update())
    return elapsed, size


def js_sync(url: str) -> float:
    out = subprocess.run(
        ["node", str(JS_DIR / "sync_time.mjs"), "--url", url], capture_output=True, check=True,
        timeout=60,
    )
    return float(json.loads(out.stdout.decode().strip().splitlines()[-1])["ms"])


def measure(tasks: int, workers: int, clients: int) -> Growth:
    with tempfile.TemporaryDirectory() as data, mesh(Path(data), workers) as (url, server):

        async def run() -> tuple[float, int, list[tuple[float, int]]]:
            async with AsyncClient(url) as client:
                await client.wait_for_workers(workers, timeout_s=60)
            started = time.perf_counter()
            await _throughput(url, tasks, clients)
            run_s = time.perf_counter() - started
            generation = await at_rest(url, timeout_s=600)
            return run_s, generation, [await python_sync(url) for _ in range(5)]

        run_s, generation, py = anyio.run(run)
        js = [js_sync(url) for _ in range(5)]
        return Growth(
            tasks=tasks, doc_bytes=py[-1][1], rss_mb=rss_mb(server.pid),
            py_sync_ms=statistics.median(ms for ms, _ in py), js_sync_ms=statistics.median(js),
            generation=generation, run_s=run_s,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    rows = [measure(n, args.workers, args.clients) for n in (args.small, args.large)]
    small, large = rows
    print(f"\n| {'tasks run':>10} | {'doc bytes':>9} | {'server RSS MB':>13} | {'py sync ms':>10} "
          f"| {'js sync ms':>10} | {'generation':>10} | {'run s':>6} |")
    print(f"|{'-' * 12}|{'-' * 11}|{'-' * 15}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
    for r in rows:
        print(f"| {r.tasks:>10,} | {r.doc_bytes:>9,} | {r.rss_mb:>13.1f} | {r.py_sync_ms:>10.2f} "
              f"| {r.js_sync_ms:>10.2f} | {r.generation:>10} | {r.run_s:>6.0f} |")
    print(f"\nlarge/small: doc size {large.doc_bytes / small.doc_bytes:.2f}x, "
          f"python sync {large.py_sync_ms / small.py_sync_ms:.2f}x, "
          f"js sync {large.js_sync_ms / small.js_sync_ms:.2f}x, RSS {large.rss_mb / small.rss_mb:.2f}x")


if __name__ == "__main__":
    main()
