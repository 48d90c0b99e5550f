"""LLM backends behind one interface."""

from __future__ import annotations

from worker.backends.base import (
    Backend,
    CachingBackend,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextChunk,
)
from worker.backends.echo import EchoBackend, echo_text

__all__ = [
    "Backend",
    "CachingBackend",
    "EchoBackend",
    "Finished",
    "GenerationEvent",
    "GenerationRequest",
    "TextChunk",
    "echo_text",
]
