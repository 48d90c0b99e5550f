"""What the OpenAI-compatible API accepts: the two request bodies, checked key by key.

The policy (docs/protocol.md section 8), in the order a body is checked:

1. The body is a JSON object (UTF-8, no NaN or Infinity, nested at most 200 levels).
2. Every key is known. A parameter that would change what the answer means and that the mesh
   does not implement (`logit_bias`, legacy `functions`, audio...) is refused with
   `unsupported_parameter`; its neutral value (`logit_bias: {}`, `functions: []`...) is
   accepted, since the answer is the one asked for. A key that is neither OpenAI's nor
   kanbanmesh's is refused with `unknown_parameter`, as OpenAI refuses it: a typo
   (`temprature`) or another server's knob would otherwise be dropped and the client would
   get an answer it did not ask for.
3. Each value has its type and range: strict types (no `"0.5"` for a number, no `true` for an
   integer; a whole float such as `100.0` is an integer), and the board's bounds
   (`max_tokens` <= 1,000,000, `seed` within +-(2^53 - 1), at most 16 `stop` strings, `n` <= 8,
   the tools' and schemas' bounds of `openai_tools`).
4. What no one field says (`check`): tool names are unique, `tool_choice` names one of them,
   `top_logprobs` comes with `logprobs`, each `tool` turn answers an earlier call.
5. Metadata (`user`, `metadata`, `store`, `service_tier`, `stream_options`, ...) is
   type-checked and not written to the task.

What passes becomes the `TaskRequest` of each choice (`task_input`, `task_params`); sampling
knobs the backends honour (`worker/backends/sampling.py`) go into its `params`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, from_json

from kanbanmesh.board.limits import MAX_SAFE_INTEGER
from kanbanmesh.board.schema import ChatMessage, RagSpec, TaskParams
from kanbanmesh.server.openai_errors import ApiError, invalid, unknown, unsupported
from kanbanmesh.server.openai_tools import (
    MAX_CALL_ID_CHARS,
    MAX_TOOL_CALLS,
    MAX_TOOLS,
    NamedToolChoice,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    response_format_field,
)

MAX_TOKENS = 1_000_000  # TaskParams.max_tokens' bound: refused here with `param` named
MAX_STOPS = 16  # TaskParams.stop's
MAX_NAME_CHARS = 256  # a model, conversation or participant name
MAX_CHOICES = 8  # `n`: one task each
MAX_TOP_LOGPROBS = 20  # OpenAI's bound


def _whole(value: object) -> object:
    # JSON has one number type: 100.0 is the integer a Python client's json.dumps may write.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _listed(value: object) -> object:
    return [value] if isinstance(value, str) else value


Whole = Annotated[int, BeforeValidator(_whole)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
StopString = Annotated[str, Field(min_length=1)]
Stops = Annotated[list[StopString], Field(max_length=MAX_STOPS)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # None only in an assistant turn with `tool_calls` (`check_turns`).
    content: str | list[TextPart] | None = None
    name: Name | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOL_CALLS)] | None = None
    tool_call_id: Annotated[str, Field(min_length=1, max_length=MAX_CALL_ID_CHARS)] | None = None
    refusal: str | None = None  # an assistant turn echoed back as the `openai` package read it

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(p.text for p in self.content)
        return self.content or ""

    def board_message(self) -> ChatMessage:
        # `developer` is OpenAI's newer name for `system`; text parts are one text; an
        # assistant turn of calls only has the text "".
        role = "system" if self.role == "developer" else self.role
        fields: dict[str, Any] = {"role": role, "content": self.text}
        if self.name:
            fields["name"] = self.name
        if self.tool_calls:
            fields["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            fields["tool_call_id"] = self.tool_call_id
        return ChatMessage.model_validate(fields)


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # OpenAI's padding of chunks; nothing to pad here


class Rag(_Strict):
    """kanbanmesh's extra body field: retrieve from a collection into the prompt."""

    collection: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    k: Whole = Field(default=4, ge=1, le=100)


class Sampling(_Strict):
    """The keys both endpoints share."""

    model: Name = ""
    stream: bool = False
    max_tokens: Whole | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Annotated[Stops | None, BeforeValidator(_listed)] = None
    seed: Whole | None = Field(default=None, ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    # Beyond OpenAI's API: what llama.cpp's server and vLLM also take (worker/backends/sampling.py).
    top_k: Whole | None = Field(default=None, ge=0, le=MAX_SAFE_INTEGER)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)
    # llama-server's: reuse a cached prefix of the prompt (on unless false).
    cache_prompt: bool | None = None
    # Choices: one task each (`MAX_CHOICES`).
    n: Whole | None = Field(default=None, ge=1, le=MAX_CHOICES)
    parallel_tool_calls: bool | None = None  # written to a chat's task with its tools
    # Metadata: checked, not written to the task.
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # kanbanmesh's extra body fields.
    conversation: Name | None = None
    rag: Rag | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def params(self) -> dict[str, Any]:
        """The task's `params`: the sampling knobs the client set."""
        fields = self.model_dump(include=set(_PARAM_KEYS), exclude_none=True)
        if not self.stop:
            fields.pop("stop", None)
        return fields

    @property
    def choices(self) -> int:
        return self.n or 1

    def task_input(self) -> dict[str, Any]:
        """The task's input fields: `messages` or `prompt`, and what a chat adds (`tools`...)."""
        raise NotImplementedError

    def check(self) -> None:
        """What no one field says: raises `ApiError` 400 when the fields disagree."""


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Whole | None = Field(default=None, ge=1, le=MAX_TOKENS)
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Whole | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def params(self) -> dict[str, Any]:
        fields = super().params()
        if self.max_completion_tokens is not None:  # the newer name wins
            fields["max_tokens"] = self.max_completion_tokens
        if self.logprobs:
            fields["logprobs"] = True
            if self.top_logprobs:
                fields["top_logprobs"] = self.top_logprobs
        return fields

    @property
    def offers_tools(self) -> bool:
        """Whether the answer may hold calls: tools given, and `tool_choice` not "none"."""
        return bool(self.tools) and self.tool_choice != "none"

    def task_input(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"messages": [m.board_message() for m in self.messages]}
        if self.tools:
            fields["tools"] = [t.model_dump(exclude_none=True) for t in self.tools]
            if self.tool_choice is not None:
                choice = self.tool_choice
                fields["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
            if self.parallel_tool_calls is not None:
                fields["parallel_tool_calls"] = self.parallel_tool_calls
        answer_form = response_format_field(self.response_format)
        if answer_form is not None:
            fields["response_format"] = answer_form
        return fields

    def check(self) -> None:
        names = [t.function.name for t in self.tools or []]
        for j, name in enumerate(names):
            if name in names[:j]:
                raise invalid(f"tools[{j}].function.name: {name!r} is named twice",
                              param=f"tools[{j}].function.name")
        choice = self.tool_choice
        if not names and choice not in (None, "auto", "none"):
            raise invalid("tool_choice is only allowed when tools are specified",
                          param="tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise invalid(f"tool_choice names the function {choice.function.name!r}, which is not "
                          "among the tools", param="tool_choice.function.name")
        if self.top_logprobs and not self.logprobs:
            raise invalid("top_logprobs needs logprobs: true", param="top_logprobs")
        check_turns(self.messages)


def check_turns(messages: Sequence[Message]) -> None:
    """Raise `ApiError` 400 where a turn's tool fields do not fit its role, or a `tool` turn
    answers no call of an earlier assistant turn (as OpenAI refuses it)."""
    called: set[str] = set()
    for i, m in enumerate(messages):
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            raise invalid(f"messages[{i}].content: only an assistant turn with tool_calls may have "
                          "no content", param=f"messages[{i}].content",
                          code="missing_required_parameter")
        if m.tool_calls and m.role != "assistant":
            raise invalid(f"messages[{i}].tool_calls: only an assistant turn makes calls",
                          param=f"messages[{i}].tool_calls")
        called.update(call.id for call in m.tool_calls or [])
        if m.role != "tool":
            if m.tool_call_id is not None:
                raise invalid(f"messages[{i}].tool_call_id: only a tool turn answers a call",
                              param=f"messages[{i}].tool_call_id")
        elif m.tool_call_id is None:
            raise invalid(f"messages[{i}].tool_call_id: a tool turn names the call it answers",
                          param=f"messages[{i}].tool_call_id", code="missing_required_parameter")
        elif m.tool_call_id not in called:
            raise invalid(f"messages[{i}].tool_call_id: a tool turn must answer a call of an "
                          "earlier assistant turn's tool_calls", param=f"messages[{i}].tool_call_id")


class CompletionRequest(Sampling):
    prompt: str  # a one-item list is unwrapped before (`_check_prompt`)

    def task_input(self) -> dict[str, Any]:
        return {"prompt": self.prompt}


_PARAM_KEYS = frozenset({
    "max_tokens", "temperature", "top_p", "stop", "seed",
    "presence_penalty", "frequency_penalty", "top_k", "min_p", "repeat_penalty", "cache_prompt",
})


def task_params(body: Sampling) -> TaskParams:
    return TaskParams.model_validate(body.params())


# --- Unsupported parameters -------------------------------------------------------------------


def _whole_number(value: object) -> int | None:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


@dataclass(frozen=True)
class _Rule:
    """An OpenAI parameter the mesh does not implement: `neutral(value)` when the value asks
    for nothing (accepted, then dropped), `asks(value)` when it asks for the feature (refused
    as unsupported); any other value is invalid."""

    neutral: Callable[[Any], bool]
    asks: Callable[[Any], bool] = lambda value: True
    what: str = ""


def _is_none(value: object) -> bool:
    return value is None


def _empty(value: object) -> bool:
    return value is None or value == [] or value == {}


def _false(value: object) -> bool:
    return value is None or value is False


def _more_than_one(value: object) -> bool:
    number = _whole_number(value)
    return number is not None and number > 1


_COMMON_UNSUPPORTED: dict[str, _Rule] = {
    "logit_bias": _Rule(neutral=_empty, what="biasing tokens"),
}
# OpenAI's legacy function calling answers in `message.function_call`, which no framework
# still reads: refused with the names to send instead, rather than answered in another shape.
_LEGACY_FUNCTIONS = "legacy function calling (send tools and tool_choice)"
_UNSUPPORTED_CHAT: dict[str, _Rule] = {
    **_COMMON_UNSUPPORTED,
    "functions": _Rule(neutral=_empty, what=_LEGACY_FUNCTIONS),
    "function_call": _Rule(neutral=lambda v: v is None or v == "none", what=_LEGACY_FUNCTIONS),
    "modalities": _Rule(neutral=lambda v: v is None or v == ["text"],
                        what="output other than text"),
    "audio": _Rule(neutral=_is_none, what="audio output"),
    "prediction": _Rule(neutral=_is_none, what="predicted outputs"),
    "reasoning_effort": _Rule(neutral=_is_none, what="reasoning settings"),
    "verbosity": _Rule(neutral=_is_none, what="verbosity settings"),
    "web_search_options": _Rule(neutral=_is_none, what="web search"),
}
_UNSUPPORTED_COMPLETION: dict[str, _Rule] = {
    **_COMMON_UNSUPPORTED,
    "best_of": _Rule(neutral=lambda v: v is None or _whole_number(v) == 1, asks=_more_than_one,
                     what="more than one candidate"),
    "logprobs": _Rule(neutral=_false,
                      asks=lambda v: _whole_number(v) is not None and type(v) is not bool,
                      what="log probabilities"),
    "echo": _Rule(neutral=_false, asks=lambda v: v is True, what="echoing the prompt"),
    "suffix": _Rule(neutral=lambda v: v is None or v == "", asks=lambda v: isinstance(v, str),
                    what="insertion (a suffix)"),
}
# Keys of a chat message that ask for legacy function calling or audio.
_UNSUPPORTED_IN_MESSAGE = ("function_call", "audio")


def _check_unsupported(
    body: dict[str, Any], rules: Mapping[str, _Rule], model: type[Sampling],
) -> None:
    """Refuse what asks for an unsupported feature; drop the neutral values of those that do
    not (except those checked as fields). In the table's order, not the body's: `tools` with
    `tool_choice` names `tools` whatever order a client wrote them in."""
    for key, rule in rules.items():
        if key not in body:
            continue
        value = body[key]
        if key in model.model_fields:
            if rule.asks(value):
                raise unsupported(key, rule.what)
            continue  # its neutral value and an invalid one are the field's to check
        if rule.neutral(value):
            del body[key]
        elif rule.asks(value):
            raise unsupported(key, rule.what)
        else:
            raise invalid(f"{key}: invalid value", param=key)


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list):
        return  # the field's type check answers
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        for key in _UNSUPPORTED_IN_MESSAGE:
            if key in message:
                if not _empty(message[key]):
                    raise unsupported(f"messages[{i}].{key}", "function_call and audio in messages")
                del message[key]
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind != "text":
                    raise unsupported(f"messages[{i}].content[{j}]",
                                      f"content of type {kind[:40]!r} (text only)")


def _check_prompt(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    if not isinstance(prompt, list):
        return
    if not prompt:
        raise invalid("prompt: an empty list", param="prompt")
    if all(isinstance(p, int | list) for p in prompt):
        raise unsupported("prompt", "a prompt of tokens (send text)")
    if len(prompt) != 1:
        raise unsupported("prompt", f"{len(prompt)} prompts in one request (send one)")
    if isinstance(prompt[0], str):
        body["prompt"] = prompt[0]


# --- Parsing ----------------------------------------------------------------------------------


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; raises `ApiError` 400 for anything else."""
    try:
        # Parsed by pydantic-core (jiter): bounded recursion, no NaN; big integers stay exact.
        body = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise invalid(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object", code="invalid_type")
    return body


def parse_request(raw: bytes, model: type[Sampling]) -> Sampling:
    """The request in `raw`, checked (module docstring); raises `ApiError` 400."""
    body = json_object(raw)
    chat = issubclass(model, ChatRequest)
    _check_unsupported(body, _UNSUPPORTED_CHAT if chat else _UNSUPPORTED_COMPLETION, model)
    for key in body:
        if key not in model.model_fields:
            raise unknown(key)
    if chat:
        _check_messages(body.get("messages"))
    else:
        _check_prompt(body)
    try:
        request = model.model_validate(body)
    except ValidationError as exc:
        raise _validation_error(exc.errors(include_url=False, include_input=False)) from None
    request.check()
    return request


def _validation_error(errors: Sequence[ErrorDetails]) -> ApiError:
    # Unknown keys first (nested ones: a message's, `rag`'s), then the deepest problem: of a
    # union (`content`: a string or parts), the member that got furthest says what is wrong.
    unknown_keys = [e for e in errors if e["type"] == "extra_forbidden"]
    first = unknown_keys[0] if unknown_keys else max(errors, key=lambda e: len(e["loc"]))
    param = _param(first["loc"])
    if first["type"] == "extra_forbidden":
        return unknown(param)
    kind = first["type"]
    if kind == "missing":
        code = "missing_required_parameter"
    elif kind.endswith("_type") or kind in ("union_tag_invalid", "is_instance_of"):
        code = "invalid_type"
    else:
        code = "invalid_value"
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return invalid(message, param=param or None, code=code)


def _param(loc: Sequence[int | str]) -> str:
    """A location as OpenAI names a parameter: `messages[0].content`."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif (part.startswith(("function-", "constrained-", "literal[")) or part in _UNION_MEMBERS
              or (i > 0 and loc[i - 1] == "response_format")):
            continue  # a union member's tag (`response_format`'s: its `type`), not a key
        else:
            out += f".{part}" if out else part
    return out


_UNION_MEMBERS = frozenset({"str", "list[TextPart]", "NamedToolChoice"})


def rag_spec(body: Sampling) -> RagSpec | None:
    return RagSpec(collection=body.rag.collection, k=body.rag.k) if body.rag else None

