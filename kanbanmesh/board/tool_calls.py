"""Tool calls in a task's streamed text: the one text form every writer and reader shares.

A task that offers `tools` may answer with calls instead of (or after) text. The worker streams
what the model generates into `output` as usual; a call appears there as

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

(the llama backend's grammar makes the model write exactly this; the OpenAI-compatible backend
renders an upstream's calls the same way), and at the end the worker writes the parsed calls to
the entry's `tool_calls`. A reader that streams (the OpenAI endpoint's `delta.tool_calls`) feeds
`output`'s appended pieces to a `ToolCallStream`, which tells text from the calls' names and
argument pieces as they arrive, and names each call with `call_id`, which the worker uses too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_NAME_KEY = '{"name": '
_ARGUMENTS_KEY = ', "arguments": '
_NAME_TOKENS = ("{", '"name"', ":")
_ARGUMENTS_TOKENS = (",", '"arguments"', ":")


def render_call(name: str, arguments: str) -> str:
    """The text form of one call; `arguments` is the JSON text of the arguments object."""
    return f"{OPEN}{_NAME_KEY}{json.dumps(name)}{_ARGUMENTS_KEY}{arguments}}}{CLOSE}"


def call_id(task_id: str, index: int) -> str:
    """The id of a task's `index`-th call (0-based): the same for the worker that writes
    `tool_calls` and for a reader that streams the call before the task finished."""
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:16]
    return f"call_{digest}_{index}"


@dataclass(frozen=True)
class Content:
    """Text outside any call."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """A call began; its arguments follow as `Arguments` pieces."""

    index: int
    name: str


@dataclass(frozen=True)
class Arguments:
    """A piece of the JSON text of call `index`'s arguments."""

    index: int
    text: str


@dataclass(frozen=True)
class CallEnd:
    """Call `index` is complete."""

    index: int


ToolCallEvent = Content | CallStart | Arguments | CallEnd


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text, as OpenAI's `function.arguments`


class _State(Enum):
    TEXT = "text"
    NAME_KEY = "name_key"  # after OPEN, reading `{"name": `
    NAME = "name"  # reading the name's JSON string
    ARGUMENTS_KEY = "arguments_key"  # reading `, "arguments": `
    ARGUMENTS = "arguments"  # reading the arguments' JSON value
    END = "end"  # reading `}` + CLOSE


class MalformedToolCall(ValueError):
    """The text after `<tool_call>` is not the form `render_call` writes."""


@dataclass
class ToolCallStream:
    """Splits streamed text into content and calls, piece by piece.

    Text that might be the start of `<tool_call>` is held back until the next piece decides;
    `finish()` releases it. Whitespace between the parts of a call is allowed; anything else
    that departs from `render_call`'s form raises `MalformedToolCall`.
    """

    _state: _State = _State.TEXT
    _held: str = ""  # text not yet decided (a possible prefix of a marker or a key)
    _calls: int = 0
    _depth: int = 0  # nesting of the arguments' JSON value
    _in_string: bool = False
    _escaped: bool = False
    _started: bool = False  # the arguments' value has begun
    _events: list[ToolCallEvent] = field(default_factory=list)

    @property
    def calls(self) -> int:
        """How many calls have started."""
        return self._calls

    @property
    def in_call(self) -> bool:
        return self._state is not _State.TEXT

    def feed(self, text: str) -> list[ToolCallEvent]:
        """The events that `text`, appended to what came before, decides."""
        self._held += text
        self._events = []
        progressed = True
        while self._held and progressed:
            progressed = self._step()
        return self._coalesce()

    def finish(self) -> list[ToolCallEvent]:
        """The end of the text: held-back text is content; an unfinished call is malformed."""
        if self._state is not _State.TEXT:
            raise MalformedToolCall("the text ended inside a tool call")
        events: list[ToolCallEvent] = [Content(self._held)] if self._held else []
        self._held = ""
        return events

    def _coalesce(self) -> list[ToolCallEvent]:
        merged: list[ToolCallEvent] = []
        for event in self._events:
            last = merged[-1] if merged else None
            if isinstance(event, Content) and isinstance(last, Content):
                merged[-1] = Content(last.text + event.text)
            elif isinstance(event, Arguments) and isinstance(last, Arguments):
                merged[-1] = Arguments(event.index, last.text + event.text)
            else:
                merged.append(event)
        return [e for e in merged if not (isinstance(e, Content | Arguments) and not e.text)]

    def _step(self) -> bool:
        """Consume what the held text decides in the current state; False when it needs more."""
        if self._state is _State.TEXT:
            return self._read_text()
        if self._state is _State.NAME_KEY:
            return self._expect(_NAME_TOKENS, _State.NAME)
        if self._state is _State.NAME:
            return self._read_name()
        if self._state is _State.ARGUMENTS_KEY:
            return self._expect(_ARGUMENTS_TOKENS, _State.ARGUMENTS)
        if self._state is _State.ARGUMENTS:
            return self._read_arguments()
        return self._read_end()

    def _read_text(self) -> bool:
        at = self._held.find(OPEN)
        if at >= 0:
            self._events.append(Content(self._held[:at]))
            self._held = self._held[at + len(OPEN):]
            self._state = _State.NAME_KEY
            return True
        keep = _partial_suffix(self._held, OPEN)
        self._events.append(Content(self._held[: len(self._held) - keep]))
        self._held = self._held[len(self._held) - keep:]
        return False

    def _expect(self, tokens: tuple[str, ...], then: _State) -> bool:
        """Consume `tokens` in order, whitespace allowed between them; False while the held
        text is still a prefix of them."""
        text, i = self._held, 0
        for token in tokens:
            while i < len(text) and text[i].isspace():
                i += 1
            piece = text[i: i + len(token)]
            if piece != token:
                if len(piece) < len(token) and token.startswith(piece):
                    return False
                raise MalformedToolCall(f"expected {token!r} in a tool call")
            i += len(token)
        self._held = text[i:]
        self._state = then
        return True

    def _read_name(self) -> bool:
        text = self._held.lstrip()
        if not text:
            return False
        if text[0] != '"':
            raise MalformedToolCall("a tool call's name must be a JSON string")
        end = _string_end(text)
        if end < 0:
            return False
        try:
            name = json.loads(text[: end + 1])
        except ValueError as exc:
            raise MalformedToolCall("a tool call's name is not a valid JSON string") from exc
        self._held = text[end + 1:]
        self._state = _State.ARGUMENTS_KEY
        self._events.append(CallStart(self._calls, name))
        return True

    def _read_arguments(self) -> bool:
        text = self._held
        if not self._started:
            text = text.lstrip()
            if not text:
                self._held = ""
                return False
            if text[0] != "{":
                raise MalformedToolCall("a tool call's arguments must be a JSON object")
            self._started = True
        for i, ch in enumerate(text):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._events.append(Arguments(self._calls, text[: i + 1]))
                    self._held = text[i + 1:]
                    self._state = _State.END
                    return True
        self._events.append(Arguments(self._calls, text))
        self._held = ""
        return False

    def _read_end(self) -> bool:
        text = self._held.lstrip()
        if not text:
            self._held = ""
            return False
        if text[0] != "}":
            raise MalformedToolCall("expected '}' after a tool call's arguments")
        rest = text[1:].lstrip()
        if len(rest) < len(CLOSE):
            if not CLOSE.startswith(rest):
                raise MalformedToolCall(f"expected {CLOSE!r} after a tool call")
            self._held = text
            return False
        if not rest.startswith(CLOSE):
            raise MalformedToolCall(f"expected {CLOSE!r} after a tool call")
        self._events.append(CallEnd(self._calls))
        self._held = rest[len(CLOSE):]
        self._calls += 1
        self._state = _State.TEXT
        self._started = False
        return True


def split_output(text: str) -> tuple[str, list[ParsedCall]]:
    """A whole output's content (the text outside calls) and its calls, in order; raises
    `MalformedToolCall` when a call is not in `render_call`'s form."""
    stream = ToolCallStream()
    content: list[str] = []
    calls: list[ParsedCall] = []
    names: dict[int, str] = {}
    arguments: dict[int, list[str]] = {}
    for event in [*stream.feed(text), *stream.finish()]:
        if isinstance(event, Content):
            content.append(event.text)
        elif isinstance(event, CallStart):
            names[event.index] = event.name
            arguments[event.index] = []
        elif isinstance(event, Arguments):
            arguments[event.index].append(event.text)
        else:
            calls.append(ParsedCall(names[event.index], "".join(arguments[event.index])))
    return "".join(content), calls


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _string_end(text: str) -> int:
    """The index of the quote closing the JSON string that opens `text`, -1 if not yet there."""
    escaped = False
    for i in range(1, len(text)):
        ch = text[i]
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return i
    return -1
