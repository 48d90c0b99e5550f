"""The Writer side: what the user selected, and inserting the answer after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from com.sun.star.text.ControlCharacter import PARAGRAPH_BREAK as UNO_PARAGRAPH_BREAK

from kanbanmesh_office.errors import SettingsError
from kanbanmesh_office.text import PARAGRAPH_BREAK, answer_pieces, selection_text


@dataclass
class Selection:
    """The text to send, and where its answer goes: a collapsed cursor at its end."""

    text: str
    anchor: Any  # a text cursor in `body`
    body: Any  # the XText holding it (the document body, a table cell, a frame...)
    controller: Any  # the document's view
    selected_from: Any | None  # the start of the user's selection (None: only a cursor)


def current_selection(document: Any) -> Selection:
    """The selected text, or the paragraph at the cursor when nothing is selected.

    Raises:
        SettingsError: no text is selected (a picture, say) or the paragraph is empty.
    """
    if not document.supportsService("com.sun.star.text.TextDocument"):
        raise SettingsError("The kanbanmesh commands work in Writer text documents.")
    selected = document.getCurrentController().getSelection()
    if selected is None or not selected.supportsService("com.sun.star.text.TextRanges"):
        raise SettingsError("Select some text (or put the cursor in a paragraph) first.")
    ranges = [selected.getByIndex(i) for i in range(selected.getCount())]
    chosen = next((r for r in ranges if r.getString()), ranges[0] if ranges else None)
    if chosen is None:
        raise SettingsError("Select some text (or put the cursor in a paragraph) first.")
    body = chosen.getText()
    cursor = body.createTextCursorByRange(chosen)
    if not chosen.getString():
        cursor.gotoStartOfParagraph(False)
        cursor.gotoEndOfParagraph(True)
    text = selection_text(cursor.getString())
    if not text.strip():
        raise SettingsError("The paragraph at the cursor is empty: select the text to send.")
    # The end of a selection made backwards is its start: take the later of the two.
    start, end = cursor.getStart(), cursor.getEnd()
    forward = body.compareRegionStarts(start, end) >= 0
    earlier, later = (start, end) if forward else (end, start)
    selected_from = body.createTextCursorByRange(earlier) if chosen.getString() else None
    controller = document.getCurrentController()
    return Selection(text, body.createTextCursorByRange(later), body, controller, selected_from)


class AnswerInserter:
    """Inserts an answer, chunk by chunk, in a paragraph of its own right after the selection.

    When the selection ends inside a paragraph, the rest of that paragraph moves to the
    paragraph after the answer. Call from the main thread.
    """

    def __init__(self, selection: Selection) -> None:
        self._selection = selection
        self._body = selection.body
        self._cursor = selection.anchor
        self._started = False
        self.inserted = ""  # the answer as inserted so far ("\n" between paragraphs)
        self.batches = 0  # how many times text arrived

    def _start(self) -> None:
        body, cursor = self._body, self._cursor
        split = not cursor.isEndOfParagraph()
        body.insertControlCharacter(cursor, UNO_PARAGRAPH_BREAK, False)
        if split:
            body.insertControlCharacter(cursor, UNO_PARAGRAPH_BREAK, False)
            cursor.goLeft(1, False)
        self._started = True
        selected_from = self._selection.selected_from
        if selected_from is not None:
            # Text inserted where a selection ends extends it: end the user's selection
            # before the answer's paragraph again, so that it still shows what was sent.
            before = body.createTextCursorByRange(cursor)
            before.gotoStartOfParagraph(False)
            before.goLeft(1, False)
            selected = body.createTextCursorByRange(selected_from)
            selected.gotoRange(before, True)
            self._selection.controller.select(selected)

    def insert(self, chunk: str) -> None:
        if not chunk:
            return
        if not self._started:
            self._start()
        for piece in answer_pieces(chunk):
            if piece == PARAGRAPH_BREAK:
                self._body.insertControlCharacter(self._cursor, UNO_PARAGRAPH_BREAK, False)
            else:
                self._body.insertString(self._cursor, piece, False)
            self.inserted += piece
        self.batches += 1
