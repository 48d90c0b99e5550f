"""The index: exact below the threshold, HNSW above it, with HNSW's recall@10 against exact."""

from __future__ import annotations

import numpy as np

from rag.index import IndexKind, IndexSettings, VectorIndex


def clustered(n: int, dim: int, seed: int, queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around 64 centres (closer to real embeddings than uniform noise), and
    `queries` more from the same distribution, as questions come from the chunks' topics."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    total = n + queries
    vectors = centres[rng.integers(0, 64, total)] + 0.6 * rng.standard_normal((total, dim)).astype(np.float32)
    unit = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return unit[:n], unit[n:]


def test_kind_follows_the_size_threshold() -> None:
    vectors, _ = clustered(300, 32, 1)
    ids = np.arange(300, dtype=np.int64) + 1000
    settings = IndexSettings(approximate_above=200)
    assert VectorIndex.build(vectors[:200], ids[:200], 32, settings).kind is IndexKind.EXACT
    hnsw = VectorIndex.build(vectors, ids, 32, settings)
    assert hnsw.kind is IndexKind.HNSW and hnsw.size == 300
    scores, found = hnsw.search(vectors[:1], 3)
    assert found[0][0] == 1000 and abs(scores[0][0] - 1.0) < 1e-4  # a vector finds itself, by id


def test_hnsw_recall_at_10_against_exact_is_at_least_0_95() -> None:
    n, dim = 10_000, 384
    vectors, queries = clustered(n, dim, 2, queries=200)
    ids = np.arange(n, dtype=np.int64)
    settings = IndexSettings()
    _, exact = VectorIndex.build(vectors, ids, dim, settings, IndexKind.EXACT).search(queries, 10)
    _, approx = VectorIndex.build(vectors, ids, dim, settings, IndexKind.HNSW).search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95, f"HNSW recall@10 {recall:.3f}"


def test_saved_index_loads_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    vectors, _ = clustered(50, 16, 4)
    index = VectorIndex.build(vectors, np.arange(50, dtype=np.int64), 16, IndexSettings())
    index.save(tmp_path / "i.faiss")
    loaded = VectorIndex.load(tmp_path / "i.faiss", IndexKind.EXACT, IndexSettings())
    assert loaded.size == 50 and loaded.search(vectors[7:8], 1)[1][0][0] == 7
