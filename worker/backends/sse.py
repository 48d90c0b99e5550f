"""Server-sent events (the `text/event-stream` format OpenAI-compatible servers stream in).

Pure parsing: lines in, events out. Only what the format needs: `data:` lines joined by
newlines, `event:` names, comment lines (`:` keep-alives) skipped, an event ending at a blank
line (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    data: str
    event: str = "message"


class EventParser:
    """Feed lines (without their line ending); complete events come back from `feed`."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None  # `id` and `retry` do not matter for one streamed response

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent("\n".join(self._data), self._event or "message")
        self._data, self._event = [], ""
        return event


async def aiter_events(lines: AsyncIterable[str]) -> AsyncIterator[ServerSentEvent]:
    """The events in a stream of lines (an unterminated last event is still delivered)."""
    parser = EventParser()
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
    event = parser.feed("")
    if event is not None:
        yield event
