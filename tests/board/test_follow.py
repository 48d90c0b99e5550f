"""The stream follower (`kanbanmesh.board.follow`) on plain documents: what it hands out, when
it reads the whole text, who it wakes, and a retry that repeats or diverges."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from pycrdt import Doc, Map, Text

from kanbanmesh.board import constants as c
from kanbanmesh.board import follow
from kanbanmesh.board.document import BoardDoc
from kanbanmesh.board.follow import KeyedSignals, TaskFollower, TaskSignals
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import StreamRestartedError

pytestmark = pytest.mark.anyio


def start(board: BoardDoc, task_id: str, attempt: int = 1) -> Text:
    """Put `task_id` into `doing` (attempt `attempt`, empty output) and return its output."""
    with board.doc.transaction():
        for column in Column:
            if task_id in board.column_map(column):
                del board.column_map(column)[task_id]
        board.column_map(Column.DOING)[task_id] = Map({c.F_ID: task_id, c.F_ATTEMPT: attempt, c.F_OUTPUT: Text()})
    output: Text = board.column_map(Column.DOING)[task_id][c.F_OUTPUT]
    return output


def finish(board: BoardDoc, task_id: str, text: str, status: str = "succeeded") -> None:
    with board.doc.transaction():
        del board.column_map(Column.DOING)[task_id]
        board.column_map(Column.DONE)[task_id] = Map(
            {c.F_ID: task_id, c.F_OUTPUT: Text(text), c.F_STATUS: status, c.F_RESULT: text}
        )


def requeue(board: BoardDoc, task_id: str, attempt: int) -> None:
    with board.doc.transaction():
        del board.column_map(Column.DOING)[task_id]
        board.column_map(Column.TODO)[task_id] = Map({c.F_ID: task_id, c.F_ATTEMPT: attempt})


@pytest.fixture
def whole_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the follower read whole (`visible_text`), in order."""
    reads: list[str] = []
    real = follow.visible_text

    def counted(ymap: Map[Any], column: Column) -> str:
        reads.append(text := real(ymap, column))
        return text

    monkeypatch.setattr(follow, "visible_text", counted)
    return reads


def test_hands_out_each_appended_piece_once_reading_the_text_whole_only_at_moves(whole_reads: list[str]) -> None:
    board = BoardDoc(Doc())
    follower = TaskFollower(lambda: board, "t")
    assert follower.step() == "" and follower.column is None
    board.column_map(Column.TODO)["t"] = Map({c.F_ID: "t"})
    assert follower.step() == "" and follower.column is Column.TODO
    output = start(board, "t")
    assert follower.step() == ""
    pieces = ["echo: ", "é ", "😀 ", "plain ", "words"]
    got = []
    for piece in pieces:
        output += piece
        got.append(follower.step())
        assert follower.step() == ""  # nothing new: nothing twice
    with board.doc.transaction():  # two appends in one update
        output += " and"
        output += " more"
    got.append(follower.step())
    assert got == [*pieces, " and more"]
    assert whole_reads == [""]  # once, when it entered `doing`; then only what was appended
    finish(board, "t", "".join(got))
    assert follower.step() == "" and follower.done
    assert follower.delivered == "".join(got)
    assert len(whole_reads) == 2  # and once in `done`
    follower.close()


def test_a_replica_fed_merged_updates_gets_the_same_pieces(whole_reads: list[str]) -> None:
    writer, reader = BoardDoc(Doc()), BoardDoc(Doc())

    def sync() -> None:
        reader.doc.apply_update(writer.doc.get_update(reader.doc.get_state()))

    with TaskFollower(lambda: reader, "t") as follower:
        output = start(writer, "t")
        output += "first "
        sync()
        assert follower.step() == "first "
        for word in ("second ", "third ", "fourth"):
            output += word
        sync()  # three appends in one update
        assert follower.step() == "second third fourth"
        assert len(whole_reads) == 1


def test_something_other_than_an_append_reads_the_text_whole(whole_reads: list[str]) -> None:
    board = BoardDoc(Doc())
    with TaskFollower(lambda: board, "t") as follower:
        output = start(board, "t")
        output += "abc"
        assert follower.step() == "abc"
        output.insert(0, "x")  # no worker does this: the follower must not trust its pieces
        with pytest.raises(StreamRestartedError):
            follower.step()
    assert whole_reads == ["abc", "xabc"]


def retried(board: BoardDoc, follower: TaskFollower) -> Text:
    """Attempt 1 streams "one two ", is lost; attempt 2 has streamed "one " so far."""
    output = start(board, "t")
    output += "one two "
    assert follower.step() == "one two "
    requeue(board, "t", attempt=2)
    assert follower.step() == ""
    output = start(board, "t", attempt=2)
    output += "one "
    assert follower.step() == ""  # repeats what was handed out
    return output


def test_a_retry_that_repeats_the_text_is_followed_silently_then_continued() -> None:
    board = BoardDoc(Doc())
    with TaskFollower(lambda: board, "t") as follower:
        output = retried(board, follower)
        output += "two three"
        assert follower.step() == "three"
        finish(board, "t", "one two three")
        assert follower.step() == "" and follower.done
        assert follower.delivered == "one two three"


def test_a_retry_that_diverges_raises_stream_restarted() -> None:
    board = BoardDoc(Doc())
    with TaskFollower(lambda: board, "t") as follower:
        output = retried(board, follower)
        output += "TWO"
        with pytest.raises(StreamRestartedError) as raised:
            follower.step()
        assert raised.value.task_id == "t" and raised.value.attempt == 2


def test_a_follower_of_the_end_only_reads_no_text(whole_reads: list[str]) -> None:
    board = BoardDoc(Doc())
    with TaskFollower(lambda: board, "t", text=False) as follower:
        output = start(board, "t")
        output += "abc"
        assert follower.step() == ""
        finish(board, "t", "abc")
        assert follower.step() == "" and follower.done
    assert whole_reads == []


async def test_a_follower_wakes_only_for_its_own_task() -> None:
    board = BoardDoc(Doc())
    signals = TaskSignals(lambda: board)
    mine, other = start(board, "mine"), start(board, "other")
    steps = 0
    looked = anyio.Event()
    pieces: list[str] = []

    def pace(_: TaskFollower) -> float:
        nonlocal steps
        steps += 1
        looked.set()
        return 60.0  # no safety wake within the test: only the signal wakes it

    async def stream() -> None:
        with signals.following("mine") as signal, TaskFollower(lambda: board, "mine") as follower:
            async for piece in follower.pieces(signal, pace):
                pieces.append(piece)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream)
            await looked.wait()
            for i in range(50):  # another task streams: the follower sleeps through it
                other += f"w{i} "
                await anyio.wait_all_tasks_blocked()
            assert steps == 1
            mine += "hello"
            while pieces != ["hello"]:
                await anyio.wait_all_tasks_blocked()
            finish(board, "other", str(other))
            finish(board, "mine", "hello")
    assert pieces == ["hello"]
    # its first look; the piece and the look after it; the move to `done`
    assert steps == 4


def test_a_retry_between_two_looks_is_seen(whole_reads: list[str]) -> None:
    board = BoardDoc(Doc())
    with TaskFollower(lambda: board, "t") as follower:
        output = start(board, "t")
        output += "one two"
        assert follower.step() == "one two"
        requeue(board, "t", attempt=2)
        output = start(board, "t", attempt=2)
        output += "one TWO"  # as long as what the lost attempt had: only its attempt tells
        with pytest.raises(StreamRestartedError):
            follower.step()
    assert whole_reads == ["one two", "one TWO"]


def test_a_signal_lives_while_anybody_holds_it_and_wakes_only_its_own_key() -> None:
    signals = KeyedSignals()
    with signals.holding("t1") as first:
        with signals.holding("t1") as second:
            assert second is first
        woken = first.upcoming()
        signals.notify_each({"t1", "t2"})  # the other holder left: t1 is still held
        assert woken.is_set()
        other = first.upcoming()
        signals.notify_each({"t2"})
        assert not other.is_set()
    assert not signals
