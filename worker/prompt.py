"""Building the turns a backend gets: the conversation's history, the retrieved context, the
task's own turns, trimmed to what the model's context holds.

The retrieval template (docs/protocol.md, "Retrieval"): the task's last user turn is
replaced by

    Answer the question using the numbered sources below. Cite the sources you use as [n].

    [1] docs/protocol.md > 4.5 Cancel
    <chunk text>

    [2] ...

    Question: <the user's text>

so that the sources sit right before the question, where a small model attends most.
Trimming, while the backend says the prompt would not fit: first the oldest history turns go,
then the lowest-ranked sources. `citations` lists the sources the prompt kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kanbanmesh.board.schema import ChatMessage, Citation, ContextChunk, TaskEntry, TaskParams

Fits = Callable[[list[ChatMessage], TaskParams], bool]

INSTRUCTION = "Answer the question using the numbered sources below. Cite the sources you use as [n]."


@dataclass(frozen=True)
class Prompt:
    messages: list[ChatMessage]
    citations: list[Citation]


def render_sources(chunks: list[ContextChunk], question: str) -> str:
    """The retrieval template around `question` (see the module docstring)."""
    parts = [INSTRUCTION]
    for n, chunk in enumerate(chunks, start=1):
        where = f"{chunk.source} > {chunk.heading}" if chunk.heading else chunk.source
        parts.append(f"[{n}] {where}\n{chunk.text}")
    parts.append(f"Question: {question}")
    return "\n\n".join(parts)


def _with_sources(turns: list[ChatMessage], chunks: list[ContextChunk]) -> list[ChatMessage]:
    if not chunks:
        return turns
    last = max((i for i, m in enumerate(turns) if m.role == "user"), default=len(turns) - 1)
    question = turns[last].content
    augmented = turns[last].model_copy(update={"content": render_sources(chunks, question)})
    return [*turns[:last], augmented, *turns[last + 1:]]


def build_prompt(task: TaskEntry, fits: Fits | None) -> Prompt:
    """The turns to generate from, and the sources they cite. `fits` (the backend's, if it has
    one) says whether turns leave room for the answer; without it everything is kept."""
    history = list(task.history or [])
    chunks = list(task.context or [])
    own = task.chat()

    def assemble() -> list[ChatMessage]:
        return [*history, *_with_sources(own, chunks)]

    if fits is not None:
        while history and not fits(assemble(), task.params):
            history.pop(0)
        while chunks and not fits(assemble(), task.params):
            chunks.pop()
    citations = [
        Citation(n=n, source=ch.source, heading=ch.heading, position=ch.position, score=ch.score)
        for n, ch in enumerate(chunks, start=1)
    ]
    return Prompt(assemble(), citations)
