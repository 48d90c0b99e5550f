"""Bytes to streamable text: split UTF-8 and stop sequences."""

from __future__ import annotations

from worker.backends.text_stream import TextStream


def stream(pieces: list[bytes], stops: tuple[str, ...] = ()) -> tuple[list[str], bool]:
    text = TextStream(stops)
    out = [text.feed(p) for p in pieces]
    out.append(text.finish())
    return [o for o in out if o], text.stopped


def test_a_character_split_across_pieces_streams_whole() -> None:
    data = "a🌊b海".encode()
    pieces = [data[i : i + 1] for i in range(len(data))]  # one byte per token, worst case
    out, _ = stream(pieces)
    assert "".join(out) == "a🌊b海"
    assert "\ufffd" not in "".join(out)
    assert "🌊" in out and "海" in out  # released whole, once complete


def test_an_incomplete_tail_is_dropped_not_replaced() -> None:
    out, _ = stream([b"ok ", "🌊".encode()[:2]])
    assert out == ["ok "]


def test_stop_sequence_cuts_and_is_never_shown_in_part() -> None:
    out, stopped = stream([b"Hello", b" wor", b"ld", b"\n\n", b"more"], stops=("\n\n",))
    assert stopped and "".join(out) == "Hello world"
    out, stopped = stream([b"one END", b"two"], stops=("END",))
    assert stopped and "".join(out) == "one "


def test_a_held_back_prefix_is_released_when_it_does_not_become_a_stop() -> None:
    text = TextStream(("STOP",))
    assert text.feed(b"go ST") == "go "
    assert text.feed(b"ART") == "START"
    assert text.finish() == "" and not text.stopped


def test_earliest_stop_wins() -> None:
    out, stopped = stream([b"x b a y"], stops=("a", "b"))
    assert stopped and out == ["x "]
