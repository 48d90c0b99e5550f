"""Ingesting with an embedder elsewhere: many batches of chunks in flight at once.

`kanbanmesh rag ingest --via ws://...` embeds a collection's chunks on the mesh's embedding
workers: the command hands `ingest_spread` an async function that embeds one batch of texts
(one `embed` task), and this module keeps `in_flight` of them running, so that every
embedding worker of the board has work. What is read, chunked and stored is exactly what an
in-process ingest does (`Collection.plan`, `store`, `finish`), files are stored in the order
an in-process ingest stores them (so chunk ids match too), and each batch's vectors are kept
in the chunk store as they arrive (`Collection.cache_vectors`): an ingest cut short resumes
without embedding again what it had received.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
import numpy as np

from kanbanmesh.errors import RagError
from rag.collection import Collection, IngestPlan, IngestProgress, IngestReport, ProgressCallback
from rag.embedding import Vectors


class BatchEmbedder(Protocol):
    """Embeds one batch of texts: float32 vectors, one row per text, as the collection's
    model gives them (L2-normalised)."""

    async def __call__(self, texts: list[str]) -> Vectors: ...


@dataclass(frozen=True)
class SpreadOptions:
    batch_size: int = 32  # chunks per call of the embedder (per embed task)
    in_flight: int = 8  # calls running at once
    follow_symlinks: bool = False


class _Progress:
    """The vectors received per planned file, and storing each file once it is complete, in
    plan order."""

    def __init__(self, collection: Collection, plan: IngestPlan, progress: ProgressCallback | None) -> None:
        self.collection = collection
        self.plan = plan
        self.received: list[dict[int, Vectors]] = []
        self.next_file = 0
        self.embedded = 0
        self._progress = progress
        self._storing = anyio.Lock()

    def report(self) -> None:
        if self._progress is not None:
            self._progress(IngestProgress("embedding", self.embedded, self.plan.chunks))

    async def store_complete(self) -> None:
        async with self._storing:
            files = self.plan.pending
            while self.next_file < len(files) and len(self.received[self.next_file]) == len(files[self.next_file].chunks):
                item, rows = files[self.next_file], self.received[self.next_file]
                matrix = item.matrix(rows, self.collection.config.dim)
                await anyio.to_thread.run_sync(self.collection.store, self.plan, item, matrix)
                self.received[self.next_file] = {}
                self.next_file += 1


async def ingest_spread(
    collection: Collection, paths: Sequence[Path], embed: BatchEmbedder,
    options: SpreadOptions = SpreadOptions(), progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest `paths` into `collection` as `Collection.ingest` does, with `embed` embedding
    batches of `options.batch_size` chunks, `options.in_flight` at once. Raises `RagError`
    (`model_mismatch` for vectors of another length than the collection's)."""
    plan = await anyio.to_thread.run_sync(functools.partial(
        collection.plan, paths, progress, follow_symlinks=options.follow_symlinks))
    state = _Progress(collection, plan, progress)
    wanted: list[tuple[int, int]] = []  # (file, chunk position) still to embed
    for number, item in enumerate(plan.pending):
        kept = await anyio.to_thread.run_sync(collection.cached_vectors, item)
        state.received.append(kept)
        wanted += [(number, p) for p in range(len(item.chunks)) if p not in kept]
    state.embedded = plan.chunks - len(wanted)
    state.report()
    await state.store_complete()  # files embedded whole by a run cut short, or of no chunks
    slots = anyio.Semaphore(max(1, options.in_flight))
    size = max(1, options.batch_size)

    async def run(batch: list[tuple[int, int]]) -> None:
        try:
            vectors = await embed([plan.pending[f].chunks[p].embedding_text() for f, p in batch])
            await _keep(state, batch, vectors)
        finally:
            slots.release()
        await state.store_complete()

    async with anyio.create_task_group() as tg:
        for start in range(0, len(wanted), size):
            await slots.acquire()
            tg.start_soon(run, wanted[start:start + size])
    await state.store_complete()
    return await anyio.to_thread.run_sync(collection.finish, plan, progress)


async def _keep(state: _Progress, batch: list[tuple[int, int]], vectors: Vectors) -> None:
    dim = state.collection.config.dim
    if vectors.shape != (len(batch), dim):
        raise RagError("model_mismatch", f"the embedder gave vectors of shape {vectors.shape} for "
                       f"{len(batch)} chunks; collection {state.collection.name!r} holds {dim} dimensions")
    if not np.isfinite(vectors).all():
        raise RagError("bad_vectors", "the embedder gave vectors that are not finite")
    by_file: dict[int, list[int]] = {}
    for row, (number, position) in enumerate(batch):
        by_file.setdefault(number, []).append(row)
    for number, rows in by_file.items():
        positions = [batch[r][1] for r in rows]
        item = state.plan.pending[number]
        await anyio.to_thread.run_sync(state.collection.cache_vectors, item, positions, vectors[rows])
        for position, row in zip(positions, rows, strict=True):
            state.received[number][position] = np.asarray(vectors[row], dtype=np.float32)
    state.embedded += len(batch)
    state.report()
