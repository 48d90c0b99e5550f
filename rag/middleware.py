"""The retrieval middleware: a task's `rag` request answered with chunks in its `context`.

Retrieval runs in the server, as a pre-inference middleware, rather than in the workers:

- the collections live under the server's data directory, where `kanbanmesh rag ingest`
  puts them; workers run anywhere (other machines, remote OpenAI-compatible backends) and
  would each need a copy of every collection and the embedding model;
- the embedding model is loaded once per server process (lazily, in a thread, by the first
  task that asks for retrieval), not once per worker process next to an LLM;
- what was retrieved is on the board before generation starts, in the entry everybody sees,
  so a board page can show the sources while the answer streams, and a retry on another
  worker uses the same context.

The worker applies the prompt template to `context` (worker/prompt.py): only it knows how
much of it fits its model's context window.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from pydantic import ValidationError

from kanbanmesh.board import constants as c
from kanbanmesh.board.schema import ContextChunk, RagSpec
from kanbanmesh.errors import MiddlewareError, RagError
from kanbanmesh.pipeline.base import FieldReader, PendingTask
from rag.collections import Collections


class RetrievalMiddleware:
    """Writes `context`: the top `k` chunks of `rag.collection` for the task's question (its
    last user turn, or its prompt). The collection is looked up among the collections of the
    task's board only (the room it was created in, never a field a client wrote): a task cannot
    read another board's documents, nor learn that they exist."""

    name = "retrieval"

    def __init__(self, collections: Collections) -> None:
        self._collections = collections

    def applies(self, entry: FieldReader) -> bool:
        return entry.get(c.F_RAG) is not None

    async def enrich(self, task: PendingTask) -> dict[str, Any]:
        try:
            spec = RagSpec.model_validate(task.fields.get(c.F_RAG))
        except ValidationError as exc:
            raise MiddlewareError("bad_rag", f"invalid rag request: {exc.errors()[0]['msg']}") from exc
        question = task.question()
        if not question.strip():
            raise MiddlewareError("bad_rag", "retrieval needs a question: the task has no user text")
        try:
            hits = await anyio.to_thread.run_sync(
                self._collections.search, task.board, spec.collection, question, spec.k
            )
        except RagError as exc:
            raise MiddlewareError(exc.code, exc.message) from exc
        chunks = [
            ContextChunk(text=h.text, source=h.source, heading=h.heading, position=h.position,
                         score=round(h.score, 4))
            for h in hits
        ]
        return {c.F_CONTEXT: [chunk.model_dump() for chunk in chunks]}
