"""Retrieval for kanbanmesh: collections of documents, chunked, embedded and indexed, searched
by the server's retrieval middleware and by `kanbanmesh rag`.

Heavy libraries (torch through sentence-transformers, faiss, pypdf) are imported only when a
model is loaded, an index built or searched, or a PDF read: importing this package is cheap.
"""

from __future__ import annotations

from rag.chunking import Chunk, ChunkPolicy, chunk_blocks
from rag.collection import Collection, IngestProgress, IngestReport, SearchHit
from rag.collections import Collections
from rag.documents import Block, read_document
from rag.embedding import DEFAULT_MODEL, Embedder, ModelCache
from rag.evaluation import EvalQuestion, EvalReport, evaluate, load_questions
from rag.index import IndexKind, IndexSettings, VectorIndex
from rag.middleware import RetrievalMiddleware
from rag.spread import BatchEmbedder, SpreadOptions, ingest_spread

__all__ = [
    "DEFAULT_MODEL",
    "BatchEmbedder",
    "Block",
    "Chunk",
    "ChunkPolicy",
    "Collection",
    "Collections",
    "Embedder",
    "EvalQuestion",
    "EvalReport",
    "IndexKind",
    "IndexSettings",
    "IngestProgress",
    "IngestReport",
    "ModelCache",
    "RetrievalMiddleware",
    "SearchHit",
    "SpreadOptions",
    "VectorIndex",
    "chunk_blocks",
    "evaluate",
    "ingest_spread",
    "load_questions",
    "read_document",
]
