"""Shared fixtures: real servers on 127.0.0.1 with ephemeral ports, real workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from worker import Worker, WorkerSettings
from worker.backends import EchoBackend
from worker.backends.embedding_base import EmbeddingBackend

ROOT = Path(__file__).resolve().parent.parent

# The embedding model and the ingested docs, one per run, for tests/rag and tests/e2e/test_rag*;
# embedding workers on the bundled model, for the embedding tests.
pytest_plugins = ["tests.rag.fixtures", "tests.e2e.embed_workers"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server_url(tmp_path: Path) -> AsyncIterator[str]:
    """A real server with the embedded broker on 127.0.0.1, on a free port."""
    settings = Settings(port=0, data_dir=tmp_path / "data", orphan_grace_s=0.5)
    async with anyio.create_task_group() as tg:
        url: str = await tg.start(serve, settings)
        yield url
        tg.cancel_scope.cancel()


@dataclass
class WorkerPool:
    """In-process echo workers, each with its own websocket connection."""

    url: str
    tg: anyio.abc.TaskGroup
    scopes: list[anyio.CancelScope] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    token: str | None = None  # the workers' token, on a server with auth on
    board: str = "default"
    # The backend every worker shares (an embedding model loaded once); None: an echo each.
    backend: EmbeddingBackend | None = None

    async def start(self, *, slots: int = 1, delay_ms: float = 0.0, name: str = "") -> Worker:
        scope = anyio.CancelScope()
        peer = BoardPeer(self.url, self.board, token=self.token)
        backend = self.backend or EchoBackend(delay_ms=delay_ms)
        worker = Worker(peer, backend, WorkerSettings(name=name, slots=slots))

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with scope:
                async with anyio.create_task_group() as tg:
                    await tg.start(peer.start)
                    await tg.start(worker.run)
                    task_status.started()

        await self.tg.start(run)
        self.scopes.append(scope)
        self.workers.append(worker)
        return worker


@pytest.fixture
async def workers(server_url: str) -> AsyncIterator[WorkerPool]:
    async with anyio.create_task_group() as tg:
        pool = WorkerPool(server_url, tg)
        yield pool
        tg.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kanbanmesh", *args]


@dataclass
class ServerProcess:
    """`kanbanmesh serve` in a child process, for tests that kill it."""

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                cli("serve", "--port", str(self.port), "--data-dir", str(self.data_dir)),
                stdout=subprocess.DEVNULL, stderr=log,
                env={**os.environ, "KANBANMESH_ORPHAN_GRACE_S": "0.5"},
            )
        self.wait_healthy()

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def wait_healthy(self, timeout_s: float = 20.0) -> dict[str, object]:
        deadline = anyio_deadline(timeout_s)
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text(errors='replace')}")
            try:
                reply = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1.0)
                if reply.status_code == 200:
                    return dict(reply.json())
            except httpx.TransportError:
                pass
            deadline.check()
            deadline.pause()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class anyio_deadline:
    """A polling deadline for synchronous waits on another process (bounded, short naps)."""

    def __init__(self, timeout_s: float) -> None:
        import time

        self._time = time
        self._end = time.monotonic() + timeout_s

    def check(self) -> None:
        if self._time.monotonic() > self._end:
            raise TimeoutError("condition not met in time")

    def pause(self) -> None:
        self._time.sleep(0.05)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(free_port(), tmp_path / "data")
    try:
        yield proc
    finally:
        proc.stop()


def node_available() -> bool:
    return (ROOT / "tests" / "js" / "node_modules" / "yjs").exists()


@pytest.fixture(scope="session")
def js_dir() -> Path:
    """tests/js with its npm packages installed (installed here if missing)."""
    js = ROOT / "tests" / "js"
    if not node_available():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=js, check=True, timeout=300)
    return js
