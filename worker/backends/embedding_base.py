"""The one interface every embedding backend implements (sentence-transformers, llama.cpp,
OpenAI-compatible HTTP).

An `embed` task carries a bounded list of inputs; the worker hands them to its backend in one
`EmbeddingRequest` and writes the vectors it gets back into the task's entry (the encoding is
the board's: docs/protocol.md). A backend raises `kanbanmesh.errors.BackendError` with a stable
`code` for anything the task should fail with (an input too long for the model, an unknown
model, `dimensions` the model cannot give).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]

# One input: a text, or the model's token ids (OpenAI's `input` allows both).
EmbeddingInput = str | Sequence[int]


@dataclass(frozen=True)
class EmbeddingRequest:
    """What to embed: the inputs in order, the model asked for ("" = the backend's first), and
    the dimensions wanted (None = the model's own)."""

    inputs: Sequence[EmbeddingInput]
    model: str = ""
    dimensions: int | None = None


@dataclass(frozen=True)
class Embeddings:
    """The vectors of a request's inputs, in order: float32, shape (len(inputs), dimensions),
    unit length where the model's vectors are meant for cosine similarity; and the tokens the
    model read (`usage.prompt_tokens`)."""

    vectors: Vectors
    prompt_tokens: int


@runtime_checkable
class EmbeddingBackend(Protocol):
    """An embedding engine a worker runs `embed` tasks on (a worker tells it from an LLM
    `Backend` with `isinstance`)."""

    @property
    def engine(self) -> str:
        """Engine name announced in awareness (`sentence-transformers`, `llama.cpp`, ...)."""
        ...

    @property
    def models(self) -> list[str]:
        """Model names this backend serves; an `embed` task's `model` must be one or ""."""
        ...

    def dimensions(self, model: str) -> int:
        """The length of `model`'s own vectors ("" = the first model)."""
        ...

    async def start(self) -> None:
        """Load what the backend needs (a model); raises `BackendError`."""
        ...

    async def stop(self) -> None:
        """Release resources."""
        ...

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """The vectors of `request.inputs`; raises `BackendError` for requests it cannot run.
        Blocking work runs off the event loop (a thread), so that a worker keeps its
        heartbeats while a large batch is embedded."""
        ...
