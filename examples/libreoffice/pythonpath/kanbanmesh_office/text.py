"""Text between Writer and the mesh: what a selection reads as, and an answer's chunks as
the pieces Writer inserts (text runs and paragraph breaks)."""

from __future__ import annotations

from typing import Final

PARAGRAPH_BREAK: Final = "\n"  # an answer's newline becomes a new paragraph in Writer


def selection_text(raw: str) -> str:
    """A selection's string as the model should read it: Writer separates paragraphs with
    CR LF or LF depending on the platform; the mesh gets LF."""
    return raw.replace("\r\n", "\n").replace("\r", "\n")


def answer_pieces(chunk: str) -> list[str]:
    """A streamed chunk as Writer inserts it: runs of text, and `PARAGRAPH_BREAK` for each
    newline (Writer's insertString would make a line break, not a paragraph, of it).
    Joined, the pieces give the chunk back (CR LF read as LF)."""
    pieces: list[str] = []
    for index, run in enumerate(selection_text(chunk).split("\n")):
        if index:
            pieces.append(PARAGRAPH_BREAK)
        if run:
            pieces.append(run)
    return pieces
