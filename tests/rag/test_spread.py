"""Ingest with an embedder elsewhere (`rag.spread`): the same collection as an in-process
ingest, and a resume after a failure that embeds only what was not received.

The embedder here is the bundled model behind an async function, run in a thread, with
several batches in flight; tests/e2e/test_rag_via.py runs the same through the mesh.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from kanbanmesh.errors import RagError
from rag.collection import Collection
from rag.embedding import ModelCache, Vectors
from rag.spread import SpreadOptions, ingest_spread

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOPICS = ["rivers", "bread", "engines", "tides", "orchards", "glaciers", "markets"]


def write_corpus(folder: Path, files: int = 5, paragraphs: int = 7) -> Path:
    """Deterministic markdown files of several chunks each (chunks of 200 characters)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        parts = [f"# File {f}"]
        for p in range(paragraphs):
            topic = TOPICS[(f + p) % len(TOPICS)]
            parts.append(f"## {topic.title()} {p}\n\nParagraph {p} of file {f} is about {topic}: "
                         + " ".join(f"{topic} fact {f}.{p}.{k} holds." for k in range(6)))
        (folder / f"doc{f}.md").write_text("\n\n".join(parts) + "\n")
    return folder


def rows(collection: Collection) -> list[tuple[Any, ...]]:
    with sqlite3.connect(collection.folder / "chunks.sqlite3") as db:
        return db.execute("SELECT id, path, position, heading, text, vector FROM chunks ORDER BY id").fetchall()


def assert_same_collection(a: Collection, b: Collection) -> None:
    left, right = rows(a), rows(b)
    assert len(left) == len(right) > 20
    assert [r[:5] for r in left] == [r[:5] for r in right]  # same chunks, same ids, same order
    va = np.stack([np.frombuffer(r[5], dtype=np.float32) for r in left])
    vb = np.stack([np.frombuffer(r[5], dtype=np.float32) for r in right])
    assert np.abs(va - vb).max() < 1e-4
    assert a.config.chunks == b.config.chunks == len(left) and not b.config.index_stale


class LocalEmbedder:
    """The bundled model in a thread; counts the texts it embeds and can fail after a number
    of calls (an ingest cut short)."""

    def __init__(self, models: ModelCache, fail_after: int | None = None) -> None:
        self._model = models.get("")
        self.fail_after = fail_after
        self.calls = 0
        self.texts = 0

    async def __call__(self, texts: list[str]) -> Vectors:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RagError("interrupted", "the test cut the ingest short")
        vectors = await anyio.to_thread.run_sync(self._model.encode, texts)
        self.texts += len(texts)
        return vectors


def policy_collection(root: Path, models: ModelCache, name: str) -> Collection:
    from rag.chunking import ChunkPolicy

    return Collection.create(root, name, models, policy=ChunkPolicy(size=200, overlap=20), dim=384)


async def test_a_spread_ingest_equals_an_in_process_one(tmp_path: Path, rag_models: ModelCache) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    with policy_collection(tmp_path / "a", rag_models, "c") as one_shot, \
            policy_collection(tmp_path / "b", rag_models, "c") as spread:
        expected = await anyio.to_thread.run_sync(one_shot.ingest, [corpus])
        embedder = LocalEmbedder(rag_models)
        seen: list[int] = []
        report = await ingest_spread(spread, [corpus], embedder, SpreadOptions(batch_size=7, in_flight=4),
                                     progress=lambda p: seen.append(p.done) if p.phase == "embedding" else None)
        assert_same_collection(one_shot, spread)
        assert (report.ingested, report.chunks_added, report.total_chunks) == (
            expected.ingested, expected.chunks_added, expected.total_chunks)
        assert embedder.texts == expected.chunks_added and seen[-1] == expected.chunks_added
        assert spread.search("Where do glaciers come from?", k=1)[0].text == one_shot.search(
            "Where do glaciers come from?", k=1)[0].text
        # Unchanged files are skipped, as in-process.
        again = await ingest_spread(spread, [corpus], embedder, SpreadOptions(batch_size=7))
        assert again.skipped == 5 and again.ingested == 0 and embedder.texts == expected.chunks_added


async def test_an_ingest_cut_short_resumes_without_embedding_again(tmp_path: Path, rag_models: ModelCache) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    with policy_collection(tmp_path / "a", rag_models, "c") as one_shot, \
            policy_collection(tmp_path / "b", rag_models, "c") as resumed:
        await anyio.to_thread.run_sync(one_shot.ingest, [corpus])
        first = LocalEmbedder(rag_models, fail_after=3)
        with pytest.raises(BaseExceptionGroup) as caught:
            await ingest_spread(resumed, [corpus], first, SpreadOptions(batch_size=5, in_flight=1))
        assert caught.group_contains(RagError)
        assert first.texts == 15 and resumed.config.index_stale  # 3 batches received, mid-file
        second = LocalEmbedder(rag_models)
        await ingest_spread(resumed, [corpus], second, SpreadOptions(batch_size=5, in_flight=3))
        total = len(rows(one_shot))
        assert second.texts == total - first.texts  # nothing received before is embedded again
        assert_same_collection(one_shot, resumed)
        with sqlite3.connect(resumed.folder / "chunks.sqlite3") as db:
            assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0


async def test_vectors_of_the_wrong_length_are_refused(tmp_path: Path, rag_models: ModelCache) -> None:
    corpus = write_corpus(tmp_path / "corpus", files=1)

    async def wrong(texts: list[str]) -> Vectors:
        return np.zeros((len(texts), 16), dtype=np.float32)

    async def not_finite(texts: list[str]) -> Vectors:
        return np.full((len(texts), 384), np.nan, dtype=np.float32)

    with policy_collection(tmp_path / "b", rag_models, "c") as collection:
        with pytest.raises(BaseExceptionGroup) as caught:
            await ingest_spread(collection, [corpus], wrong)
        assert caught.group_contains(RagError, match="384 dimensions")
        with pytest.raises(BaseExceptionGroup) as caught:
            await ingest_spread(collection, [corpus], not_finite)
        assert caught.group_contains(RagError, match="not finite")
        assert rows(collection) == []
    with pytest.raises(RagError, match="not 16"):
        Collection.create(tmp_path / "b", "c", rag_models, dim=16)


class CountingModel:
    """The bundled model as a `ModelCache` loads it, counting texts, failing after a number of
    batches."""

    def __init__(self, models: ModelCache, fail_after: int | None = None) -> None:
        self._model = models.get("")
        self.dim, self.name = self._model.dim, self._model.name
        self.fail_after = fail_after
        self.calls = self.texts = 0

    def encode(self, texts: list[str], batch_size: int = 32) -> Vectors:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RagError("interrupted", "the test cut the ingest short")
        self.texts += len(texts)
        return self._model.encode(texts, batch_size)

    def count_tokens(self, text: str) -> int:
        return self._model.count_tokens(text)


async def test_an_in_process_ingest_cut_short_resumes_too(tmp_path: Path, rag_models: ModelCache) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    first, second = CountingModel(rag_models, fail_after=3), CountingModel(rag_models)
    with policy_collection(tmp_path / "a", rag_models, "c") as one_shot:
        await anyio.to_thread.run_sync(one_shot.ingest, [corpus])
        total = one_shot.config.chunks
        with (
            policy_collection(tmp_path / "b", ModelCache(loader=lambda *_: first), "c") as cut,  # type: ignore[arg-type]
            pytest.raises(RagError, match="cut the ingest short"),
        ):
            await anyio.to_thread.run_sync(lambda: cut.ingest([corpus], batch_size=4))
        assert 0 < first.texts < total and first.calls == 4  # 3 batches, then the failure
        with policy_collection(tmp_path / "b", ModelCache(loader=lambda *_: second), "c") as resumed:  # type: ignore[arg-type]
            await anyio.to_thread.run_sync(lambda: resumed.ingest([corpus], batch_size=4))
            assert second.texts == total - first.texts
            assert_same_collection(one_shot, resumed)
