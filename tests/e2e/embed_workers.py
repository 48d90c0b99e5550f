"""Embedding workers for the embedding tests: the real sentence-transformers backend on the
bundled model, loaded once per run and shared by the workers each test starts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import numpy as np
import pytest

from kanbanmesh.embedding_models import resolve_model
from kanbanmesh.errors import BackendError
from tests.conftest import WorkerPool
from worker.backends.st_embed import SentenceTransformerBackend


class SharedModelBackend(SentenceTransformerBackend):
    """The real backend, kept loaded when a worker stops (the next test's worker uses it)."""

    async def stop(self) -> None:
        return None


@pytest.fixture(scope="session")
def st_backend() -> Iterator[SharedModelBackend]:
    backend = SharedModelBackend(threads=1)
    anyio.run(backend.start)
    yield backend


@pytest.fixture(scope="session")
def reference_model() -> object:
    """sentence-transformers itself on the bundled model: what the vectors must equal."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(resolve_model("", BackendError)), device="cpu", local_files_only=True)


def reference(model: object, texts: list[str]) -> np.ndarray:
    encoded = model.encode(texts, convert_to_numpy=True, show_progress_bar=False)  # type: ignore[attr-defined]
    return np.asarray(encoded, dtype=np.float32)


@pytest.fixture
async def embed_workers(server_url: str, st_backend: SharedModelBackend) -> AsyncIterator[WorkerPool]:
    """Start embedding workers on the bundled model (`await embed_workers.start(slots=2)`)."""
    async with anyio.create_task_group() as tg:
        yield WorkerPool(server_url, tg, backend=st_backend)
        tg.cancel_scope.cancel()
