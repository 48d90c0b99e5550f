"""RAG benchmark: ingest throughput, and question-to-chunks latency at 10k and 100k chunks.

Run from the repository root::

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.rag

1. **Ingest**: README.md and docs/*.md (`--copies` copies of each, so there is enough to
   time) into a fresh collection with the bundled model: chunks per second embedded and
   indexed, read to index built.
2. **Query** at each size of `--sizes`: an index of that many chunk vectors, exact
   (`IndexFlatIP`) and approximate (HNSW), timed per question *including embedding the
   question* (the target's definition), p50 and p99; and the HNSW index's recall@10 against
   exact over the same questions.

Embedding 100k chunks for real would take hours on 2 cores, so the index vectors are
synthetic, but shaped like real ones: each is a random mix of the embeddings of three real
chunks of the docs, plus noise, normalised. The timed questions are real: the shipped eval
set's, each embedded for every query. Recall@10 against exact is measured over those
questions' vectors and perturbed copies of them (`--queries` in all).

Target (issue 8): p50 under 20 ms at 100k chunks with recall@10 of at least 0.95.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from rag.collection import Collection
from rag.embedding import Embedder, ModelCache, Vectors
from rag.evaluation import load_questions, percentile
from rag.index import IndexKind, IndexSettings, VectorIndex

ROOT = Path(__file__).resolve().parent.parent
NOISE = 0.02  # per dimension, before normalising


def ingest(models: ModelCache, copies: int) -> tuple[int, float, float, Vectors]:
    """Ingest `copies` copies of the docs: (chunks, chunks/s embedded and indexed, seconds
    spent embedding, the distinct vectors of the real chunks)."""
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        for n in range(copies):
            folder = corpus / f"copy{n}"
            folder.mkdir(parents=True)
            for source in sources:
                shutil.copy(source, folder / source.name)
        collection = Collection.create(Path(tmp) / "rag", "bench", models)
        started = time.perf_counter()
        report = collection.ingest([corpus])
        seconds = time.perf_counter() - started
        _, vectors = collection._store.vectors(collection.config.dim)  # a bench may look inside
        collection.close()
    distinct: Vectors = np.unique(vectors, axis=0)  # the copies embed alike
    return report.chunks_added, report.chunks_added / seconds, report.embed_seconds, distinct


def synthetic(real: Vectors, n: int, seed: int) -> Vectors:
    """`n` chunk-like vectors: each a random mix of three real chunks' vectors (Dirichlet
    weights) plus noise, normalised. They fill the region real embeddings occupy rather than
    piling up as near-copies of a few (which no index, exact or not, ranks meaningfully)."""
    rng = np.random.default_rng(seed)
    picks = real[rng.integers(0, len(real), (n, 3))]
    weights = rng.dirichlet([1.0, 1.0, 1.0], n).astype(np.float32)
    mixed: Vectors = np.einsum("nk,nkd->nd", weights, picks)
    mixed += NOISE * rng.standard_normal(mixed.shape).astype(np.float32)
    unit: Vectors = (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)
    return unit


def question_vectors(embedder: Embedder, questions: list[str], n: int, seed: int) -> Vectors:
    """The real questions' vectors, and perturbed copies of them up to `n` (for recall)."""
    real = embedder.encode(questions)
    rng = np.random.default_rng(seed)
    extra = real[rng.integers(0, len(real), max(0, n - len(real)))]
    extra = extra + NOISE * rng.standard_normal(extra.shape).astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    return np.concatenate([real, extra.astype(np.float32)])


def timed_queries(embedder: Embedder, index: VectorIndex, questions: list[str]) -> tuple[list[float], list[float]]:
    """Per question: ms to embed it and search (k=10), and ms to search alone."""
    total, search = [], []
    for question in questions:
        started = time.perf_counter()
        vector = embedder.encode([question])
        embedded = time.perf_counter()
        index.search(vector, 10)
        done = time.perf_counter()
        total.append((done - started) * 1000.0)
        search.append((done - embedded) * 1000.0)
    return total, search


def recall_at_10(exact: VectorIndex, approx: VectorIndex, queries: Vectors) -> float:
    _, truth = exact.search(queries, 10)
    _, found = approx.search(queries, 10)
    return float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="index sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=200, help="timed questions per index")
    parser.add_argument("--copies", type=int, default=2, help="copies of the docs to ingest")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the server uses 1)")
    args = parser.parse_args()

    models = ModelCache(threads=args.threads)
    embedder = models.get()
    chunks, rate, embed_s, real = ingest(models, args.copies)
    print(f"ingest: {chunks} chunks, {rate:.1f} chunks/s embedded and indexed "
          f"({chunks / embed_s:.1f} chunks/s embedding alone), {args.threads} torch thread(s)")

    base = [q.question for q in load_questions(ROOT / "rag" / "eval" / "kanbanmesh_docs.jsonl")]
    questions = [base[i % len(base)] for i in range(args.queries)]
    recall_queries = question_vectors(embedder, base, args.queries, seed=7)
    settings = IndexSettings()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        vectors = synthetic(real, size, seed=size)
        ids = np.arange(size, dtype=np.int64)
        exact = VectorIndex.build(vectors, ids, embedder.dim, settings, IndexKind.EXACT)
        started = time.perf_counter()
        approx = VectorIndex.build(vectors, ids, embedder.dim, settings, IndexKind.HNSW)
        build_s = time.perf_counter() - started
        recall = recall_at_10(exact, approx, recall_queries)
        for kind, index in ((IndexKind.EXACT, exact), (IndexKind.HNSW, approx)):
            timed_queries(embedder, index, questions[:10])  # warm-up
            total, search = timed_queries(embedder, index, questions)
            total.sort()
            search.sort()
            rows.append((size, kind.value, statistics.median(total), percentile(total, 0.99),
                         statistics.median(search), percentile(search, 0.99),
                         recall if kind is IndexKind.HNSW else 1.0,
                         build_s if kind is IndexKind.HNSW else 0.0))
    print()
    print("| chunks | index | p50 ms | p99 ms | search p50 ms | search p99 ms | recall@10 vs exact | build s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for size, kind_name, p50, p99, s50, s99, recall, build in rows:
        print(f"| {size:,} | {kind_name} | {p50:.2f} | {p99:.2f} | {s50:.3f} | {s99:.3f} | {recall:.3f} | "
              f"{build:.1f} |")


if __name__ == "__main__":
    main()
