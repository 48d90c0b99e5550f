"""Session fixtures of the RAG tests (registered for the whole suite in tests/conftest.py):
the embedding model loaded once, and this project's docs ingested once."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from kanbanmesh.board.constants import DEFAULT_BOARD
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from rag.collection import Collection
from rag.embedding import ModelCache

ROOT = Path(__file__).resolve().parents[2]
DOCS_COLLECTION = "kmdocs"
EVAL_SET = ROOT / "rag" / "eval" / "kanbanmesh_docs.jsonl"


def docs_paths() -> list[Path]:
    """What the shipped eval set is labelled over: README.md and docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.fixture(scope="session")
def rag_models() -> ModelCache:
    """The bundled embedding model, loaded on first use, once for the whole run (one thread:
    the tests share two cores with the servers and workers they start)."""
    return ModelCache(threads=1)


@pytest.fixture(scope="session")
def docs_collection_root(rag_models: ModelCache, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A collections folder (a data directory's `rag/`) where board `default` holds `kmdocs`:
    README.md and docs/*.md, ingested."""
    root = tmp_path_factory.mktemp("rag") / "rag"
    collection = Collection.create(root / DEFAULT_BOARD, DOCS_COLLECTION, rag_models)
    try:
        collection.ingest(docs_paths())
    finally:
        collection.close()
    yield root


def copy_collections(root: Path, data_dir: Path, board: str = DEFAULT_BOARD) -> Path:
    """A copy of the collections under `root` as board `board`'s in `data_dir` (a server's
    `--data-dir`)."""
    target = data_dir / "rag" / board
    shutil.copytree(root / DEFAULT_BOARD, target)
    return target


@pytest.fixture
async def rag_server(tmp_path: Path, docs_collection_root: Path, rag_models: ModelCache) -> AsyncIterator[str]:
    """A real server on 127.0.0.1 whose data directory holds the ingested docs (`kmdocs`),
    retrieving with the run's shared embedding model."""
    copy_collections(docs_collection_root, tmp_path / "data")
    settings = Settings(port=0, data_dir=tmp_path / "data", orphan_grace_s=0.5)
    async with anyio.create_task_group() as tg:
        url: str = await tg.start(lambda task_status: serve(settings, rag_models=rag_models,
                                                            task_status=task_status))
        yield url
        tg.cancel_scope.cancel()
