"""The vector index of a collection (faiss): exact below a size threshold, HNSW above it.

Vectors are L2-normalised, so inner product is cosine similarity. Exact search
(`IndexFlatIP`) scans every vector: at 10k chunks that is well under a millisecond, and it is
always right. Above `approximate_above` vectors (20,000 by default) the index is an HNSW graph
(`IndexHNSWFlat`, inner product), whose search cost grows with log(n); its recall@10 against
exact is measured in bench/rag.py and checked in tests/rag/test_index.py.

Chunk ids are kept in the index (`IndexIDMap2`). The index is rebuilt from the stored vectors
after each ingest that changed something (HNSW cannot remove vectors), written to a temporary
file and renamed, so a reader never sees half of it.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from kanbanmesh.errors import RagError
from rag.embedding import Vectors

Ids = npt.NDArray[np.int64]


class IndexKind(str, Enum):
    EXACT = "exact"  # flat inner product: every vector scanned
    HNSW = "hnsw"  # a navigable small-world graph: approximate, log-time


class IndexSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Measured here (docs/benchmarks.md): exact search over 384-dimension vectors costs ~0.14 ms
    # per 1,000 (14 ms at 100k); embedding the question ~13 ms. Above 20k the HNSW graph
    # (~0.3 ms a query, recall@10 ~1.0) keeps question-to-chunks under 20 ms.
    approximate_above: int = Field(default=20_000, ge=0)
    hnsw_m: int = Field(default=32, ge=4, le=128)  # graph degree: recall and memory
    ef_construction: int = Field(default=80, ge=8)
    # Candidates kept per query: recall vs time. 256 measured recall@10 0.98 against exact at
    # 100k chunks for ~0.5 ms a query (bench/rag.py); 96 gave 0.93.
    ef_search: int = Field(default=256, ge=8)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise RagError("rag_unavailable", "vector search needs faiss: pip install 'kanbanmesh[rag]'") from exc
    return faiss


class VectorIndex:
    """A faiss index over chunk ids."""

    def __init__(self, index: Any, kind: IndexKind, settings: IndexSettings) -> None:
        self._index = index
        self.kind = kind
        self.settings = settings
        if kind is IndexKind.HNSW:
            _faiss().downcast_index(index.index).hnsw.efSearch = settings.ef_search

    @classmethod
    def build(cls, vectors: Vectors, ids: Ids, dim: int, settings: IndexSettings,
              kind: IndexKind | None = None) -> VectorIndex:
        """An index of `vectors` (rows) under `ids`; `kind` None picks it by size."""
        faiss = _faiss()
        if kind is None:
            kind = IndexKind.HNSW if len(ids) > settings.approximate_above else IndexKind.EXACT
        if kind is IndexKind.HNSW:
            inner = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = settings.ef_construction
        else:
            inner = faiss.IndexFlatIP(dim)
        index = faiss.IndexIDMap2(inner)
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                               np.ascontiguousarray(ids, dtype=np.int64))
        return cls(index, kind, settings)

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: Vectors, k: int) -> tuple[npt.NDArray[np.float32], Ids]:
        """Scores and ids of the `k` nearest vectors per query row (id -1: fewer than k)."""
        if self.size == 0:
            n = len(queries)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        scores, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.size))
        return scores, ids

    def save(self, path: Path) -> None:
        partial = path.with_suffix(path.suffix + ".partial")
        _faiss().write_index(self._index, str(partial))
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path, kind: IndexKind, settings: IndexSettings) -> VectorIndex:
        try:
            index = _faiss().read_index(str(path))
        except RuntimeError as exc:  # faiss reports a bad or missing file so
            raise RagError("index_unreadable", f"cannot read the index {path}: {exc}") from exc
        return cls(index, kind, settings)
