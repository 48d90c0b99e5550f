"""The collections under one data directory, opened on first use and kept open.

The server owns one (with its `ModelCache`) and hands it to the retrieval middleware; the
embedding model is loaded once per process, lazily, by the first search that needs it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from rag.collection import Collection, CollectionConfig, SearchHit, read_config
from rag.embedding import ModelCache


class Collections:
    """Collections under `root` (`<data dir>/rag`); thread-safe, every call blocks."""

    def __init__(self, root: Path, models: ModelCache) -> None:
        self.root = root
        self.models = models
        self._open: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Collection:
        """The collection `name`; raises `RagError` `collection_not_found`."""
        with self._lock:
            collection = self._open.get(name)
            if collection is None:
                collection = Collection.open(self.root, name, self.models)
                self._open[name] = collection
            return collection

    def search(self, name: str, question: str, k: int) -> list[SearchHit]:
        return self.get(name).search(question, k)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "collection.json").is_file())

    def configs(self) -> list[CollectionConfig]:
        """Every collection's configuration (name, chunks, model, index), by name."""
        found = (read_config(self.root, name) for name in self.names())
        return [config for config in found if config is not None]

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
