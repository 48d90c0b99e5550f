"""Following one task's streamed text: the one way every reader in Python does it (the SDK's
`TaskHandle.stream()`, the HTTP API's streaming answers).

What a reader sees of a task is its visible text (`kanbanmesh.board.document.visible_text`):
the `output` its worker appends to, or, once it succeeded, its `result`. A `TaskFollower`
hands out what that text gained since it last looked, each piece once (docs/protocol.md
section 5):

- it wakes only for its own task: its owner gives it a signal notified by the updates that
  touch that task (`TaskSignals` on a peer's replica; the server's room has its own);
- within one attempt it reads only what was appended: it observes the `output` text it follows
  and takes the inserted strings from that text's events, reading the whole text only when the
  entry was replaced (moved to another column, a new attempt, a new board generation);
- across a retry it stays quiet while the new attempt repeats what was handed out, goes on once
  the new text extends it, and raises `StreamRestartedError` when the new text differs (a
  diverging retry): what was handed out cannot be taken back, so the stream ends there, and
  the task's final text is read from its entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from functools import partial
from typing import Any, Self

import anyio
from pycrdt import Map, Subscription, Text

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, visible_text
from kanbanmesh.board.events import ColumnWatch, event_keys, event_path, observe_events
from kanbanmesh.board.reads import entry_field, output_length, read_field
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import StreamRestartedError
from kanbanmesh.notify import ChangeSignal


class KeyedSignals:
    """A `ChangeSignal` per key (a task id) for as long as somebody holds it (`holding`):
    whoever learns that a task changed notifies only those who wait on that task."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[ChangeSignal, int]] = {}  # signal, how many hold it

    def __bool__(self) -> bool:
        return bool(self._held)

    @contextmanager
    def holding(self, key: str) -> Iterator[ChangeSignal]:
        """The signal of `key`, for as long as the block runs."""
        signal, count = self._held.get(key, (ChangeSignal(), 0))
        self._held[key] = (signal, count + 1)
        try:
            yield signal
        finally:
            signal, count = self._held[key]
            if count == 1:
                del self._held[key]
            else:
                self._held[key] = (signal, count - 1)

    def notify(self, key: Any) -> None:
        found = self._held.get(key)
        if found is not None:
            found[0].notify()

    def notify_each(self, keys: AbstractSet[Any]) -> None:
        """Notify the signals of those of `keys` somebody holds."""
        for key in keys & self._held.keys():
            self._held[key][0].notify()

    def notify_all(self) -> None:
        for signal, _ in self._held.values():
            signal.notify()


class TaskSignals:
    """A `ChangeSignal` per task followed on a peer's replica, notified only by the updates
    that touch that task (its entry, a field of it, its text, its key in a column).

    One deep observer per column serves all followers; it runs only while somebody follows.
    Call `reset()` after the replica was replaced and `notify_all()` when the peer stopped.
    """

    def __init__(self, board_of: Callable[[], BoardDoc]) -> None:
        self._signals = KeyedSignals()
        self._watches = [ColumnWatch(partial(_column_of, board_of, column), self._on_events, deep=True)
                         for column in Column]

    @contextmanager
    def following(self, task_id: str) -> Iterator[ChangeSignal]:
        """The signal of `task_id`, for as long as the block runs."""
        if not self._signals:
            for watch in self._watches:
                watch.start()
        try:
            with self._signals.holding(task_id) as signal:
                yield signal
        finally:
            if not self._signals:
                for watch in self._watches:
                    watch.stop()  # or Yrs keeps the replica alive (ColumnWatch)

    def reset(self) -> None:
        """Observe the new replica's columns, and wake every follower to look there."""
        for watch in self._watches:
            watch.restart()
        self.notify_all()

    def notify_all(self) -> None:
        self._signals.notify_all()

    def _on_events(self, events: Any) -> None:
        for event in events:
            path = event_path(event)
            # Below a column, the first step of the path is the task's key; at the column
            # itself, the keys of the change are (a task added, moved in or out, deleted).
            for task_id in (path[0],) if path else event_keys(event):
                self._signals.notify(task_id)


_NOT_DOING = (Column.TODO, Column.PREPARED, Column.DONE)
_ABSENT = object()  # a field an entry does not hold


def _column_of(board_of: Callable[[], BoardDoc], column: Column) -> Map[Any]:
    return board_of().column_map(column)


class TaskFollower:
    """Hands out, piece by piece, what the visible text of task `task_id` gained.

    `step()` looks once; `pieces()` loops over `step()`, waking on a signal. Close it (or use
    it as a context manager) to stop observing the text it follows. With `text=False` it
    follows only where the task is (for a reader that waits for the end, not the text).
    """

    def __init__(self, board_of: Callable[[], BoardDoc], task_id: str, *, text: bool = True) -> None:
        self.task_id = task_id
        self.text = text
        self.column: Column | None = None  # where the task was at the last step (None: absent)
        self._board_of = board_of
        self._pieces: list[str] = []  # everything handed out, joined when it must be compared
        self._delivered_chars = 0
        # How much of the followed attempt's text this follower has seen: always a prefix of
        # what was handed out (what went beyond it was handed out), so only its length is kept;
        # and which entry it is the text of.
        self._seen_chars = 0
        self._seen_bytes = 0  # the same length as Yrs counts it (UTF-8 bytes)
        self._source: tuple[BoardDoc, Column, Any] | None = None
        # The observed `output`, and the strings appended to it since the last step.
        self._watch: tuple[Text, Subscription] | None = None
        self._appended: list[str] = []
        self._appended_bytes = 0
        self._broken = False  # something other than an append happened to it: read it whole

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def done(self) -> bool:
        """Whether the task was in `done` at the last step (its text is then final)."""
        return self.column is Column.DONE

    @property
    def delivered(self) -> str:
        """Everything handed out so far."""
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def close(self) -> None:
        if self._watch is not None:
            text, subscription = self._watch
            text.unobserve(subscription)
            self._watch = None
        self._appended, self._appended_bytes, self._broken = [], 0, False

    def step(self) -> str:
        """What the task's visible text gained since the last step ("" if nothing).

        Raises:
            StreamRestartedError: a retry's text differs from what was handed out.
        """
        board = self._board_of()
        with board.doc.transaction():  # one for all the reads below, not one per read
            return self._step(board)

    def _step(self, board: BoardDoc) -> str:
        if self._only_appended(board):
            gained = "".join(self._appended)
            self._appended, self._appended_bytes = [], 0
            self.column = Column.DOING
            return self._advance(gained, self._source[2] if self._source else None)
        column = self.column = board.locate(self.task_id)
        if column is None or column in (Column.TODO, Column.PREPARED) or not self.text:
            return ""  # no text to follow yet (or again, after a retry)
        # A new entry (or something other than appends happened): read its text whole.
        self.close()
        ymap = read_field(board.column_map(column), self.task_id)
        attempt = read_field(ymap, c.F_ATTEMPT)
        self._source = (board, column, attempt)
        if column is Column.DOING:
            output = read_field(ymap, c.F_OUTPUT)
            if isinstance(output, Text):
                self._watch = (output, observe_events(output, self._on_text_event))
        text = visible_text(ymap, column)
        self._seen_chars = self._seen_bytes = 0
        return self._advance(text, attempt)

    def _only_appended(self, board: BoardDoc) -> bool:
        """Whether all that happened to the task since the last step is appends to the text
        it follows: the same entry is still the task's only copy, in `doing`, and its text is
        as long as the appends seen make it. Read without wrapping anything (the common case,
        once per chunk)."""
        source = self._source
        if source is None or source[0] is not board or source[1] is not Column.DOING:
            return False
        if self._watch is None or self._broken:
            return False
        task_id = self.task_id
        doing = board.column_map(Column.DOING)
        return (
            not any(task_id in board.column_map(column) for column in _NOT_DOING)
            and entry_field(doing, task_id, c.F_ATTEMPT, _ABSENT) == source[2]
            and output_length(doing, task_id) == self._seen_bytes + self._appended_bytes
        )

    async def pieces(self, signal: ChangeSignal, pace: Callable[[TaskFollower], float]) -> AsyncIterator[str]:
        """What `step()` gives, as it comes, until the task is in `done`.

        `signal` is notified by changes of the task; `pace(self)` runs after each step: it
        raises to end the stream (a peer that stopped, a task that waited too long), else says
        how long to wait for `signal` at most before looking again.
        """
        while True:
            changed = signal.upcoming()  # taken before the read: no change slips between
            piece = self.step()
            wait_s = pace(self)
            if piece:
                yield piece
                continue
            if self.done:
                return
            with anyio.move_on_after(max(wait_s, 0.0)):
                await changed.wait()

    def _on_text_event(self, event: Any) -> None:
        if self._broken:
            return
        delta = event.delta
        at = delta[0].get("retain", 0) if delta else -1
        insert = delta[-1].get("insert") if delta else None
        if (
            len(delta) != (2 if at else 1)
            or at != self._seen_bytes + self._appended_bytes
            or not isinstance(insert, str)
            or delta[-1].get("attributes")
        ):
            self._broken = True  # not a plain append at the end
            return
        self._appended.append(insert)
        self._appended_bytes += len(insert.encode())

    def _advance(self, gained: str, attempt: Any) -> str:
        """The followed attempt's text grew by `gained`: what goes beyond what was handed out.
        While a retry repeats what was handed out, that part is compared, not handed out again."""
        seen = self._seen_chars
        self._seen_chars += len(gained)
        self._seen_bytes += len(gained.encode())
        overlap = min(self._delivered_chars - seen, len(gained))
        if overlap > 0 and not self.delivered.startswith(gained[:overlap], seen):
            self.close()
            raise StreamRestartedError(self.task_id, int(attempt or 1))
        piece = gained[overlap:] if overlap > 0 else gained
        if piece:
            self._pieces.append(piece)
            self._delivered_chars += len(piece)
        return piece
