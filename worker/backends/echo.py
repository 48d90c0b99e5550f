"""The echo backend: a deterministic, model-free stand-in for tests and benchmarks.

It answers `"echo: " + <last user turn or prompt>`, one word (with its trailing space) per
chunk, honouring `max_tokens` (one chunk is one token) and `stop`, with an optional delay
between chunks to imitate a model's pace.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator

import anyio

from kanbanmesh.board.schema import Usage
from kanbanmesh.errors import BackendError
from worker.backends.base import Finished, GenerationEvent, GenerationRequest, TextChunk

_PIECE = re.compile(r"\S+\s*|\s+")

ECHO_MODEL = "echo"


def echo_text(request: GenerationRequest) -> str:
    """The full text the echo backend answers to `request` (before max_tokens and stop)."""
    if request.messages is not None:
        users = [m.content for m in request.messages if m.role == "user"]
        source = users[-1] if users else request.messages[-1].content
    else:
        source = request.prompt or ""
    return "echo: " + source


class EchoBackend:
    """Streams back a deterministic transformation of the prompt."""

    def __init__(self, *, delay_ms: float = 0.0, model: str = ECHO_MODEL) -> None:
        if delay_ms < 0:
            raise BackendError("bad_config", "echo delay must be >= 0 ms")
        self._delay_s = delay_ms / 1000.0
        self._model = model

    @property
    def engine(self) -> str:
        return "echo"

    @property
    def models(self) -> list[str]:
        return [self._model]

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if request.model and request.model != self._model:
            raise BackendError("model_not_found", f"this worker serves {self._model!r}, not {request.model!r}")
        pieces = _PIECE.findall(echo_text(request))
        prompt_tokens = len(pieces) - 1
        limit = request.params.max_tokens
        stops = request.params.stop or []
        produced = ""
        count = 0
        reason = "stop"
        for piece in pieces:
            if limit is not None and count >= limit:
                reason = "length"
                break
            candidate = produced + piece
            cut = _first_stop(candidate, stops)
            if cut is not None:
                if cut > len(produced):
                    yield TextChunk(candidate[len(produced) : cut])
                    count += 1
                break
            if self._delay_s and count:
                await anyio.sleep(self._delay_s)
            produced = candidate
            count += 1
            yield TextChunk(piece)
        yield Finished(
            Usage(prompt_tokens=prompt_tokens, completion_tokens=count, total_tokens=prompt_tokens + count),
            reason,
        )


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
