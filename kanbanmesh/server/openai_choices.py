"""The choices of an answer: a finished task as OpenAI's `choice`, a streaming one as deltas.

A task that was offered tools streams its calls inside `output` in the board's text form
(`kanbanmesh.board.tool_calls`); `ChoiceDeltas` turns its pieces into OpenAI's chunk deltas:
text as `delta.content`, a call's start as `delta.tool_calls` with its index, id (`call_id`,
the id the worker writes into the entry's `tool_calls`), type and name, then its argument
pieces. The finished entry's `tool_calls`, `result` and `logprobs` make the non-streaming
choice.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from kanbanmesh.board.schema import TaskEntry
from kanbanmesh.board.tool_calls import (
    Arguments,
    CallStart,
    Content,
    ToolCallEvent,
    ToolCallStream,
    call_id,
)
from kanbanmesh.server.openai_errors import ApiError, internal
from kanbanmesh.server.openai_tools import ToolCall

_PLAIN: TypeAdapter[Any] = TypeAdapter(Any)
_CALLS: TypeAdapter[list[ToolCall]] = TypeAdapter(list[ToolCall])


def _written(entry: TaskEntry, name: str) -> Any:
    """A worker-written field as plain JSON values (None when absent)."""
    return _PLAIN.dump_python(getattr(entry, name, None), mode="json")


def tool_calls(entry: TaskEntry) -> list[dict[str, Any]]:
    """The entry's calls in OpenAI's `message.tool_calls` shape ([] when none); a worker's
    malformed value answers 500 rather than reach the client."""
    value = _written(entry, "tool_calls")
    if not value:
        return []
    try:
        return [call.model_dump() for call in _CALLS.validate_python(value)]
    except ValidationError as exc:
        raise internal(f"task {entry.id[:64]} holds malformed tool_calls") from exc


def logprobs(entry: TaskEntry) -> dict[str, Any] | None:
    value = _written(entry, "logprobs")
    return value if isinstance(value, dict) else None


def finish_reason(entry: TaskEntry, called: bool) -> str:
    """The entry's; "tool_calls" where the answer holds calls and stopped on its own."""
    reason = entry.finish_reason or "stop"
    return "tool_calls" if called and reason == "stop" else reason


def message_choice(index: int, entry: TaskEntry) -> dict[str, Any]:
    """A finished chat task as a non-streaming choice."""
    calls = tool_calls(entry)
    text = entry.result or ""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {"index": index, "message": message, "finish_reason": finish_reason(entry, bool(calls)),
            "logprobs": logprobs(entry)}


def text_choice(index: int, entry: TaskEntry) -> dict[str, Any]:
    """A finished completion task as a non-streaming choice."""
    return {"index": index, "text": entry.result or "", "finish_reason": entry.finish_reason or "stop",
            "logprobs": None}


def usage(entries: list[TaskEntry]) -> dict[str, Any]:
    """The answer's usage: the prompt once (every choice read the same one), the completions
    of all choices."""
    first = entries[0].usage if entries else None
    prompt = first.prompt_tokens if first else 0
    cached = first.cached_tokens if first else 0
    completion = sum(e.usage.completion_tokens if e.usage else e.tokens for e in entries)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def malformed_call(task_id: str, reason: str) -> ApiError:
    """The error event of a stream whose task wrote a call not in the board's text form."""
    return ApiError(500, f"task {task_id[:64]} streamed a malformed tool call: {reason}",
                    kind="server_error", code="malformed_tool_call")


class ChoiceDeltas:
    """One streamed chat choice: the task's text pieces in, OpenAI's `delta` objects out.
    Without tools the text is content as it comes; with them it goes through a
    `ToolCallStream` (which raises `MalformedToolCall` on text that departs from the form).
    The worker's `result` is the text outside calls stripped, when there are calls (the
    newline between two calls is no content): content's trailing whitespace waits for what
    follows, and is left out at the end of an answer with calls. (Leading whitespace streams:
    whether calls will follow is not known yet.)"""

    def __init__(self, task_id: str, *, tools: bool) -> None:
        self._task_id = task_id
        self._stream = ToolCallStream() if tools else None
        self._blank = ""  # trailing whitespace of the content so far, not yet sent

    @property
    def called(self) -> bool:
        return self._stream is not None and self._stream.calls > 0

    def feed(self, text: str) -> list[dict[str, Any]]:
        if self._stream is None:
            return [{"content": text}] if text else []
        return self._deltas(self._stream.feed(text))

    def finish(self, *, truncated: bool = False) -> list[dict[str, Any]]:
        """The held-back text at the end. A call cut short (`truncated`: the task stopped at
        `max_tokens`) stays as streamed, as OpenAI leaves it; otherwise it is malformed."""
        if self._stream is None or (truncated and self._stream.in_call):
            return []
        deltas = self._deltas(self._stream.finish())
        if self._blank and not self.called:
            deltas.append({"content": self._blank})
        return deltas

    def _deltas(self, events: list[ToolCallEvent]) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, Content):
                text = self._blank + event.text
                body = text.rstrip()
                self._blank = text[len(body):]
                if body:
                    deltas.append({"content": body})
            elif isinstance(event, CallStart):
                deltas.append({"tool_calls": [{
                    "index": event.index, "id": call_id(self._task_id, event.index), "type": "function",
                    "function": {"name": event.name, "arguments": ""},
                }]})
            elif isinstance(event, Arguments):
                deltas.append({"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]})
        return deltas
