"""Splitting a document's blocks into chunks: the chunking policy (pure code, no model).

Policy (documented in docs/protocol.md, "Retrieval"):

- A chunk never crosses a heading: each section (the blocks under one heading path) is
  chunked on its own, and every chunk carries its section's heading path.
- Within a section, whole paragraphs are packed into a chunk while it stays within `size`
  (counted in `unit`: characters, or tokens of the embedding model's tokenizer).
- A paragraph longer than `size` is cut at sentence ends, and a sentence longer than `size`
  between words (a word longer than `size` characters, at `size`).
- Consecutive chunks of one section overlap: a chunk starts with the last words of the one
  before, up to `overlap` units, so a fact cut in two is still whole in one of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import groupby
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rag.documents import Block

Length = Callable[[str], int]

# Part of every file's digest (rag.collection): a release that chunks differently re-chunks
# the files it finds unchanged.
CHUNKING_VERSION = 2

_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+")


class ChunkPolicy(BaseModel):
    """How documents are cut into chunks (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    # 800 characters is ~200 word pieces: under the 256 that all-MiniLM-L6-v2 reads before
    # it truncates, so nothing of a chunk goes unembedded.
    size: int = Field(default=800, ge=20)
    overlap: int = Field(default=100, ge=0)
    unit: Literal["chars", "tokens"] = "chars"

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkPolicy:
        if self.overlap >= self.size:
            raise ValueError("the overlap must be smaller than the chunk size")
        return self


@dataclass(frozen=True)
class Chunk:
    text: str
    heading: str  # heading path, "" for none
    position: int  # 0-based order of the chunk in its document

    def embedding_text(self) -> str:
        """What is embedded: the heading path, then the text (the heading names the topic
        that the paragraphs under it often leave implicit)."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def chunk_blocks(blocks: Iterable[Block], policy: ChunkPolicy, length: Length = len) -> list[Chunk]:
    """Cut a document's blocks into chunks by `policy`; `length` measures text in its unit."""
    chunks: list[Chunk] = []
    for heading, section in groupby(blocks, key=lambda b: b.heading):
        for text in _chunk_section([b.text for b in section], policy, length):
            chunks.append(Chunk(text, heading, len(chunks)))
    return chunks


def _chunk_section(paragraphs: list[str], policy: ChunkPolicy, length: Length) -> list[str]:
    pieces = [piece for p in paragraphs for piece in _fit(p, policy.size, length)]
    out: list[str] = []
    current: list[str] = []
    fresh = False  # whether `current` holds more than the overlap carried from the chunk before
    for piece in pieces:
        candidate = "\n\n".join([*current, piece])
        if current and length(candidate) > policy.size:
            if fresh:
                out.append("\n\n".join(current))
            tail = _tail(out[-1], policy.overlap, length) if out and policy.overlap else ""
            current = [tail] if tail and length(f"{tail}\n\n{piece}") <= policy.size else []
        current.append(piece)
        fresh = True
    if current and fresh:
        out.append("\n\n".join(current))
    return out


def _fit(paragraph: str, size: int, length: Length) -> list[str]:
    """A paragraph as pieces no longer than `size`: whole, or cut at line ends (code and
    tables keep their lines), then at sentence ends, then between words."""
    if length(paragraph) <= size:
        return [paragraph]
    pieces: list[str] = []
    for line in paragraph.splitlines():
        if length(line) <= size:
            _pack(pieces, line, "\n", size, length)
            continue
        for sentence in _SENTENCE_END.split(line):
            if length(sentence) <= size:
                _pack(pieces, sentence, " ", size, length)
                continue
            for word in sentence.split():
                for part in _hard_cut(word, size, length):
                    _pack(pieces, part, " ", size, length)
    return pieces


def _pack(pieces: list[str], text: str, joiner: str, size: int, length: Length) -> None:
    if pieces and length(pieces[-1] + joiner + text) <= size:
        pieces[-1] = pieces[-1] + joiner + text
    else:
        pieces.append(text)


def _hard_cut(word: str, size: int, length: Length) -> list[str]:
    if length(word) <= size:
        return [word]
    # `size` characters are at most `size` tokens too: a token is at least one character.
    return [word[i:i + size] for i in range(0, len(word), size)]


def _tail(text: str, overlap: int, length: Length) -> str:
    """The last whole words of `text` within `overlap` units."""
    words = text.split()
    tail: list[str] = []
    for word in reversed(words):
        if length(" ".join([word, *tail])) > overlap:
            break
        tail.insert(0, word)
    if len(tail) == len(words):
        return ""  # the whole chunk again would be no progress
    return " ".join(tail)
