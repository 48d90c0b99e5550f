"""Ingest a small corpus of every format, search it, and re-ingest it unchanged and changed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.collection import Collection, IngestProgress
from rag.embedding import ModelCache
from rag.index import IndexKind
from tests.rag.pdf import write_pdf


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    docs = tmp_path / "corpus"
    docs.mkdir()
    (docs / "animals.md").write_text(
        "# Animals\n\n## Birds\n\nThe arctic tern migrates from pole to pole every year.\n\n"
        "## Fish\n\nThe salmon swims upstream to spawn in the river where it hatched.\n"
    )
    (docs / "kitchen.txt").write_text("Bread rises because yeast ferments the sugars in the dough.\n")
    (docs / "planets.html").write_text(
        "<h1>Planets</h1><p>Jupiter is the largest planet of the solar system.</p>"
        "<script>var noise = 1</script>"
    )
    (docs / "capitals.csv").write_text("country,capital\nPeru,Lima\nKenya,Nairobi\n")
    write_pdf(docs / "manual.pdf", ["To reset the router, hold the red button for ten seconds."])
    (docs / ".hidden.md").write_text("never ingested")
    return docs


@pytest.fixture
def collection(tmp_path: Path, rag_models: ModelCache) -> Iterator[Collection]:
    made = Collection.create(tmp_path / "rag", "corpus", rag_models)
    try:
        yield made
    finally:
        made.close()


def top(collection: Collection, question: str) -> str:
    hit = collection.search(question, k=1)[0]
    return f"{Path(hit.source).name} | {hit.heading} | {hit.text}"


def test_search_finds_the_chunk_that_answers(corpus: Path, collection: Collection) -> None:
    report = collection.ingest([corpus])
    assert (report.files, report.ingested, report.skipped) == (5, 5, 0)
    assert report.total_chunks == report.chunks_added >= 6 and report.index_kind is IndexKind.EXACT
    assert top(collection, "Which bird flies from one pole to the other?").startswith("animals.md | Animals > Birds")
    assert "salmon" in top(collection, "Where do salmon lay their eggs?")
    assert top(collection, "Why does dough rise?").startswith("kitchen.txt")
    assert top(collection, "What is the biggest planet?").startswith("planets.html | Planets")
    assert "Nairobi" in top(collection, "What is the capital city of Kenya?")
    assert top(collection, "How do I reset my router?").startswith("manual.pdf | page 1")
    hits = collection.search("Why does dough rise?", k=3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].source.endswith("corpus/kitchen.txt") and 0.3 < hits[0].score <= 1.0001


def test_reingest_skips_unchanged_files_and_replaces_changed_ones(corpus: Path, collection: Collection) -> None:
    collection.ingest([corpus])
    version = collection.config.index_version
    before = {h.source: h.chunk_id for h in collection.search("pole to pole bird", k=10)}

    again = collection.ingest([corpus])
    assert (again.ingested, again.skipped, again.chunks_added, again.chunks_removed) == (0, 5, 0, 0)
    assert collection.config.index_version == version, "nothing changed: the index is not rebuilt"

    (corpus / "kitchen.txt").write_text("Pasta is cooked in salted boiling water for nine minutes.\n")
    changed = collection.ingest([corpus])
    assert (changed.ingested, changed.skipped, changed.chunks_added, changed.chunks_removed) == (1, 4, 1, 1)
    assert changed.total_chunks == again.total_chunks
    assert "Pasta" in top(collection, "How long do I cook pasta?")
    assert all("yeast" not in h.text for h in collection.search("Why does bread dough rise with yeast?", k=10))
    after = {h.source: h.chunk_id for h in collection.search("pole to pole bird", k=10)}
    assert after[next(s for s in before if s.endswith("animals.md"))] == before[
        next(s for s in before if s.endswith("animals.md"))], "unchanged files keep their chunks"


def test_another_process_reingesting_is_seen_by_an_open_collection(
    corpus: Path, tmp_path: Path, rag_models: ModelCache, collection: Collection
) -> None:
    collection.ingest([corpus])
    assert "Jupiter" in top(collection, "biggest planet")
    other = Collection.open(tmp_path / "rag", "corpus", rag_models)  # as `kanbanmesh rag ingest` would
    (corpus / "planets.html").write_text("<h1>Planets</h1><p>Saturn has the most famous rings.</p>")
    other.ingest([corpus / "planets.html"])
    other.close()
    os.sync()
    assert "Saturn" in top(collection, "Which planet has rings?")


def test_an_ingest_cut_short_is_indexed_by_the_next_one(corpus: Path, collection: Collection) -> None:
    collection.ingest([corpus])
    (corpus / "kitchen.txt").write_text("Rice needs twice its volume of water.\n")

    def crash(step: IngestProgress) -> None:
        if step.phase == "indexing":
            raise KeyboardInterrupt  # after the chunks are stored, before the index is rebuilt

    with pytest.raises(KeyboardInterrupt):
        collection.ingest([corpus], progress=crash)
    assert collection.config.index_stale
    resumed = collection.ingest([corpus])
    assert resumed.ingested == 0 and not collection.config.index_stale
    assert "Rice" in top(collection, "How much water for rice?")
