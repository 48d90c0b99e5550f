"""`kanbanmesh rag ingest --via ws://...`: the chunks embedded as embed tasks by the board's
embedding workers (the real bundled model), the same collection as an in-process ingest, every
worker used, and a resume after the ingesting process is killed."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from kanbanmesh.board.constants import DEFAULT_BOARD
from kanbanmesh.commands.rag import split_via
from kanbanmesh.errors import ConfigurationError
from rag.collection import Collection
from rag.embedding import ModelCache
from tests.conftest import WorkerPool, cli
from tests.e2e.embed_workers import SharedModelBackend
from tests.rag.test_spread import assert_same_collection, write_corpus
from worker.backends.embedding_base import EmbeddingRequest, Embeddings

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

COLLECTION = "viadocs"
BATCH = 8
IN_FLIGHT = 2


class CountingBackend:
    """The shared real backend, counting what this worker embedded; `reached` is set once it
    has run `target` tasks."""

    def __init__(self, inner: SharedModelBackend, target: int = 0) -> None:
        self._inner = inner
        self.tasks = 0
        self.texts = 0
        self.target = target
        self.reached = anyio.Event()

    @property
    def engine(self) -> str:
        return self._inner.engine

    @property
    def models(self) -> list[str]:
        return self._inner.models

    def dimensions(self, model: str) -> int:
        return self._inner.dimensions(model)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        result = await self._inner.embed(request)
        self.tasks += 1
        self.texts += len(request.inputs)
        if self.target and self.tasks >= self.target:
            self.reached.set()
        return result


@pytest.fixture
async def pool(server_url: str, st_backend: SharedModelBackend) -> AsyncIterator[WorkerPool]:
    async with anyio.create_task_group() as tg:
        yield WorkerPool(server_url, tg)
        tg.cancel_scope.cancel()


async def start_workers(pool: WorkerPool, st_backend: SharedModelBackend, count: int,
                        target: int = 0) -> list[CountingBackend]:
    backends = []
    for _ in range(count):
        pool.backend = CountingBackend(st_backend, target)
        backends.append(pool.backend)
        await pool.start()
    return backends


def ingest_command(url: str, data_dir: Path, corpus: Path, *extra: str) -> list[str]:
    return cli("rag", "ingest", "--via", url, "--data-dir", str(data_dir), "--collection", COLLECTION,
               "--batch-size", str(BATCH), "--quiet", *extra, str(corpus))


def reference(tmp_path: Path, corpus: Path, models: ModelCache) -> Collection:
    collection = Collection.create(tmp_path / "reference", COLLECTION, models)
    collection.ingest([corpus])
    return collection


def stored(data_dir: Path) -> int:
    """Chunks whose vectors the store holds: stored, or kept for a file not stored yet."""
    path = data_dir / "rag" / DEFAULT_BOARD / COLLECTION / "chunks.sqlite3"
    if not path.is_file():
        return 0
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT (SELECT COUNT(*) FROM chunks) + (SELECT COUNT(*) FROM pending)").fetchone()[0])


async def test_ingest_via_the_mesh_equals_in_process_and_uses_every_worker(
    server_url: str, pool: WorkerPool, st_backend: SharedModelBackend, rag_models: ModelCache, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus", files=12)
    backends = await start_workers(pool, st_backend, 2)
    with anyio.fail_after(300):
        done = await anyio.run_process(ingest_command(server_url, tmp_path / "data", corpus), check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert b"12 ingested" in done.stdout
    with reference(tmp_path, corpus, rag_models) as expected, \
            Collection.open(tmp_path / "data" / "rag" / DEFAULT_BOARD, COLLECTION, rag_models) as via:
        assert_same_collection(expected, via)
        total = via.config.chunks
    assert all(b.tasks > 0 for b in backends), [b.tasks for b in backends]
    assert sum(b.texts for b in backends) == total + 1  # and the probe that reads the dimensions


async def test_an_ingest_killed_midway_resumes_without_embedding_again(
    server_url: str, pool: WorkerPool, st_backend: SharedModelBackend, rag_models: ModelCache, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus", files=30)
    data_dir = tmp_path / "data"
    [first] = await start_workers(pool, st_backend, 1, target=IN_FLIGHT * 5 + 1)
    process = await anyio.open_process(
        ingest_command(server_url, data_dir, corpus, "--in-flight", str(IN_FLIGHT)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with anyio.fail_after(300):
            await first.reached.wait()  # the probe and 10 batches embedded: mid-way
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    kept, before = stored(data_dir), first.texts
    with reference(tmp_path, corpus, rag_models) as expected:
        total = expected.config.chunks
        leftover = IN_FLIGHT * BATCH  # the killed process's tasks still on the board may run
        assert leftover < kept < total
        pool.backend = second = CountingBackend(st_backend)
        await pool.start()
        with anyio.fail_after(300):
            done = await anyio.run_process(ingest_command(server_url, data_dir, corpus), check=False)
        assert done.returncode == 0, done.stderr.decode()
        # The rerun embeds what the store did not hold, and its probe: not what it held.
        rerun = first.texts - before + second.texts
        assert total - kept + 1 <= rerun <= total - kept + 1 + leftover
        with Collection.open(data_dir / "rag" / DEFAULT_BOARD, COLLECTION, rag_models) as resumed:
            assert_same_collection(expected, resumed)


def test_via_names_a_server_and_maybe_a_board() -> None:
    assert split_via("ws://127.0.0.1:8765", "b") == ("ws://127.0.0.1:8765", "b")
    assert split_via("wss://mesh.example:443/team-a/", "b") == ("wss://mesh.example:443", "team-a")
    for bad in ("http://x:1", "ws://", "ws://x:1/a/b", "ws://x:1/?q=1", "127.0.0.1:8765"):
        with pytest.raises(ConfigurationError):
            split_via(bad, "b")

