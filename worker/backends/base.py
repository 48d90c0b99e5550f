"""The one interface every LLM backend implements (llama.cpp, OpenAI-compatible HTTP, echo).

A backend turns a `GenerationRequest` into a stream of `TextChunk`s ending with one
`Finished`. The worker stops a generation by closing the async iterator (`aclose()`); a
backend must stop generating within one token when that happens. Backends raise
`kanbanmesh.errors.BackendError` with a stable `code` for anything the task should fail with.
A backend with a prompt cache may also say what it holds (`CachingBackend`), so that the
broker sends a conversation's next turn where its earlier turns are cached.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kanbanmesh.board.schema import ChatMessage, TaskParams, TaskRequest, Usage
from kanbanmesh.board.tool_schema import Logprobs, NamedToolChoice, ResponseFormat, ToolSpec


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: chat turns (a bare prompt arrives as `prompt`) and sampling params."""

    messages: list[ChatMessage] | None
    prompt: str | None
    params: TaskParams
    model: str = ""
    # The task's turns as the broker names prefixes (kanbanmesh/board/prefix.py), for a backend
    # that advertises what its prompt cache holds; () when unknown.
    turns: tuple[tuple[str, str], ...] = ()
    # Tool calling (docs/protocol.md section 12): the task's tools, and the choice in force
    # (`none`: the model is offered none; an OpenAI-compatible server gets them as they are). A call is written into the text in
    # `kanbanmesh.board.tool_calls.render_call`'s form; the worker parses it at the end.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | NamedToolChoice = "none"  # auto | none | required | a named function
    parallel_tool_calls: bool = True  # False: at most one call
    response_format: ResponseFormat | None = None  # None: text

    @classmethod
    def for_task(cls, task: TaskRequest) -> GenerationRequest:
        """The request for a task's own fields (the worker adds history, sources and turns)."""
        return cls(
            messages=task.messages, prompt=task.prompt, params=task.params, model=task.model,
            tools=tuple(task.tools or ()), tool_choice=task.choice(),
            parallel_tool_calls=task.parallel_tool_calls is not False, response_format=task.response_format,
        )

    def offered(self) -> tuple[ToolSpec, ...]:
        """The tools the model may call: those of `tool_choice`, none with `none`."""
        choice = self.tool_choice
        if choice == "none":
            return ()
        if isinstance(choice, NamedToolChoice):
            return tuple(t for t in self.tools if t.function.name == choice.function.name)
        return self.tools


@dataclass(frozen=True)
class TextChunk:
    """A piece of generated text, in order."""

    text: str
    tokens: int = 1


@dataclass(frozen=True)
class Finished:
    """The end of a generation."""

    usage: Usage
    finish_reason: str = "stop"  # stop | length | cancelled
    prompt_ms: float = 0.0  # reading the prompt, when the backend knows it
    logprobs: Logprobs | None = None  # with `params.logprobs`: one item per generated token


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


@runtime_checkable
class CachingBackend(Protocol):
    """What a backend with a prompt cache offers besides `Backend` (optional: the worker
    checks with `isinstance`)."""

    def cache_digest(self) -> dict[str, int]:
        """What its sequences hold: `kanbanmesh.board.prefix.prefix_hashes` of each one's turns
        (a task's `task_turns(fields)`, and once it finished, `("assistant", result)`), each
        mapped to the prompt tokens that prefix covers; at most `MAX_DIGEST_ENTRIES` (64).
        Called on every awareness announcement of the worker (at most every 250 ms, and at
        each heartbeat): cheap, no I/O; the worker announces it when it changed."""
        ...
