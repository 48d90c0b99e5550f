"""Which prompt format a GGUF model is talked to in, decided once when the model loads.

llama-cpp-python falls back to the llama-2 format when a GGUF has no chat template, which
makes most models answer nonsense without any error. Here the format comes from, in order:
`--chat-format NAME` (a llama-cpp-python format such as `chatml`, one of the GGUF's own
templates such as `chat_template.default`, or `none` for raw completion of bare prompts),
else the GGUF's template, chosen the way llama-cpp-python chooses it; a model with neither is
refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from llama_cpp import llama_chat_format as lcf

from kanbanmesh.errors import BackendError
from worker.backends.base import GenerationRequest
from worker.backends.tool_prompt import (
    TOOLS_INSTRUCTION,
    generic_messages,
    template_messages,
    template_tools,
)

RAW = "none"
TEMPLATE_KEY = "tokenizer.chat_template"
DEFAULT_TEMPLATE = "chat_template.default"


@dataclass(frozen=True)
class Prompt:
    """A request rendered for the model: text to tokenize and where generation must stop."""

    text: str
    add_bos: bool  # whether tokenizing must add the model's BOS (the template did not)
    stops: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Specials:
    """The model's special tokens, which chat templates refer to."""

    bos_text: str
    eos_text: str
    eos_id: int


class ChatFormat(Protocol):
    @property
    def name(self) -> str:
        """The format's name (`chatml`, `chat_template.default`, `none`, ...)."""
        ...

    def render(self, request: GenerationRequest) -> Prompt:
        """The prompt for `request`; raises `BackendError("bad_params")` if it cannot be formed."""
        ...


@dataclass(frozen=True)
class TemplateFormat:
    """Chat turns through a llama-cpp-python formatter (a GGUF Jinja template or a named one)."""

    name: str
    formatter: Callable[..., lcf.ChatFormatterResponse]
    stop_token_ids: frozenset[int] = frozenset()
    # A Jinja template written for tool calling (it reads `tools`) renders tools and tool
    # turns itself; any other gets them in the generic form (`tool_prompt`).
    reads_tools: bool = False

    def render(self, request: GenerationRequest) -> Prompt:
        # A bare prompt is one user turn (docs/protocol.md).
        try:
            if self.reads_tools:
                result = self.formatter(messages=template_messages(request), tools=template_tools(request))
            else:
                result = self.formatter(messages=generic_messages(request))
                if request.offered() and TOOLS_INSTRUCTION not in result.prompt:  # it drops system turns
                    result = self.formatter(messages=generic_messages(request, in_system=False))
        except Exception as exc:  # jinja2 errors and the templates' own raise_exception
            raise BackendError(
                "bad_params", f"the {self.name} chat format cannot render these messages: {exc}"
            ) from exc
        stop = result.stop if result.stop is not None else []
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        return Prompt(result.prompt, not result.added_special, stops, self.stop_token_ids)


@dataclass(frozen=True)
class RawFormat:
    """No chat format (`--chat-format none`): a bare prompt is completed as it is."""

    name: str = RAW

    def render(self, request: GenerationRequest) -> Prompt:
        if request.messages is not None:
            raise BackendError(
                "bad_params",
                "this worker runs its model without a chat format (--chat-format none): "
                "send a bare `prompt`, not `messages`",
            )
        return Prompt(request.prompt or "", add_bos=True)


def resolve_chat_format(
    metadata: Mapping[str, str], specials: Specials, requested: str = "", *, model: str = "the model"
) -> ChatFormat:
    """The format for a model with GGUF `metadata`; raises `BackendError("no_chat_format")`."""
    templates = {name[len("tokenizer.") :]: t for name, t in metadata.items() if name.startswith(TEMPLATE_KEY + ".")}
    if TEMPLATE_KEY in metadata:
        templates[DEFAULT_TEMPLATE] = metadata[TEMPLATE_KEY]
    if requested == RAW:
        return RawFormat()
    if requested in templates:
        return _jinja(requested, templates[requested], specials)
    if requested:
        return _named(requested)
    if DEFAULT_TEMPLATE not in templates:
        raise BackendError(
            "no_chat_format",
            f"{model} has no chat template, and without one its answers would be garbage: "
            "pass --chat-format NAME (for instance chatml, llama-3, gemma, mistral-instruct), "
            "or --chat-format none to complete bare prompts as they are",
        )
    # Same choice as llama-cpp-python: a template it recognises maps to its named format.
    guessed = lcf.guess_chat_format_from_gguf_metadata(dict(metadata))
    if guessed is not None:
        return _named(guessed)
    return _jinja(DEFAULT_TEMPLATE, templates[DEFAULT_TEMPLATE], specials)


def _jinja(name: str, template: str, specials: Specials) -> TemplateFormat:
    try:
        formatter = lcf.Jinja2ChatFormatter(
            template=template,
            eos_token=specials.eos_text,
            bos_token=specials.bos_text,
            stop_token_ids=[specials.eos_id],
        )
    except Exception as exc:  # a template that does not compile
        raise BackendError("no_chat_format", f"the model's chat template {name} is invalid: {exc}") from exc
    return TemplateFormat(name, formatter, frozenset({specials.eos_id}), reads_tools="tools" in template)


def _named(name: str) -> TemplateFormat:
    try:
        handler = lcf.get_chat_completion_handler(name)
    except lcf.LlamaChatCompletionHandlerNotFoundException as exc:
        raise BackendError("no_chat_format", f"unknown chat format {name!r}: {exc}") from None
    # Formats registered with @register_chat_format wrap a plain formatter; others (llava,
    # functionary) drive the model themselves and cannot be streamed token by token here.
    formatter: Any = inspect.getclosurevars(handler).nonlocals.get("chat_formatter")
    if not callable(formatter):
        raise BackendError("no_chat_format", f"chat format {name!r} is not a plain prompt format")
    return TemplateFormat(name, formatter)
