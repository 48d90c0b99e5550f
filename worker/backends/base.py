"""The one interface every LLM backend implements (llama.cpp, OpenAI-compatible HTTP, echo).

A backend turns a `GenerationRequest` into a stream of `TextChunk`s ending with one
`Finished`. The worker stops a generation by closing the async iterator (`aclose()`); a
backend must stop generating within one token when that happens. Backends raise
`kanbanmesh.errors.BackendError` with a stable `code` for anything the task should fail with.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from kanbanmesh.board.schema import ChatMessage, TaskParams, Usage


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: chat turns (a bare prompt arrives as `prompt`) and sampling params."""

    messages: list[ChatMessage] | None
    prompt: str | None
    params: TaskParams
    model: str = ""


@dataclass(frozen=True)
class TextChunk:
    """A piece of generated text, in order."""

    text: str
    tokens: int = 1


@dataclass(frozen=True)
class Finished:
    """The end of a generation."""

    usage: Usage
    finish_reason: str = "stop"  # stop | length


GenerationEvent = TextChunk | Finished


class Backend(Protocol):
    """An LLM engine a worker runs tasks on."""

    @property
    def engine(self) -> str:
        """Engine name announced in awareness (`llama.cpp`, `echo`, ...)."""
        ...

    @property
    def models(self) -> list[str]:
        """Model names this backend serves; a task's `model` must be one of them or ""."""
        ...

    async def start(self) -> None:
        """Load what the backend needs (a model); raises `BackendError`."""
        ...

    async def stop(self) -> None:
        """Release resources."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream the generation; raises `BackendError` for requests it cannot run."""
        ...
