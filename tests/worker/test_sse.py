"""Server-sent events parsing."""

from __future__ import annotations

import pytest

from worker.backends.sse import EventParser, ServerSentEvent, aiter_events

pytestmark = pytest.mark.anyio


def test_events_end_at_blank_lines_and_comments_are_skipped() -> None:
    parser = EventParser()
    lines = [": keep-alive", "data: {\"a\": 1}", "", "event: error", "data: x", "data:y", "", ""]
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert events == [ServerSentEvent('{"a": 1}'), ServerSentEvent("x\ny", "error")]


async def test_an_unterminated_last_event_is_delivered() -> None:
    async def lines():  # type: ignore[no-untyped-def]
        for line in ["data: one", "", "data: [DONE]"]:
            yield line

    assert [e.data async for e in aiter_events(lines())] == ["one", "[DONE]"]
