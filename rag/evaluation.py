"""Measuring retrieval: recall@k, MRR and latency over a labelled set of questions.

A question file is JSON lines, one question each::

    {"question": "How does a client cancel a task?",
     "sources": [{"path": "docs/protocol.md", "heading": "4.5 Cancel"}]}

A source is a path (matched as a suffix of the chunk's source, so `docs/protocol.md` matches
however the file was named when ingested), optionally with a heading (matched as part of the
chunk's heading path). A retrieved chunk is relevant when it matches any of the sources.

- recall@k: the share of questions with a relevant chunk among the first k;
- MRR: the mean of 1/rank of the first relevant chunk (0 when none is in the first k);
- latency: per question, embedding the question and searching, in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from kanbanmesh.errors import RagError
from rag.collection import Collection, SearchHit


class Source(BaseModel):
    path: str = Field(min_length=1)
    heading: str = ""

    def matches(self, hit: SearchHit) -> bool:
        return (hit.source == self.path or hit.source.endswith("/" + self.path)) and (
            self.heading.lower() in hit.heading.lower()
        )


class EvalQuestion(BaseModel):
    question: str = Field(min_length=1)
    sources: list[Source | str] = Field(min_length=1)

    def relevant(self, hit: SearchHit) -> bool:
        return any((Source(path=s) if isinstance(s, str) else s).matches(hit) for s in self.sources)


class QuestionResult(BaseModel):
    question: str
    rank: int | None  # 1-based rank of the first relevant chunk within k, None if none
    ms: float


class EvalReport(BaseModel):
    questions: int
    k: int
    recall_at_k: float
    mrr: float
    p50_ms: float
    p99_ms: float
    results: list[QuestionResult]


def load_questions(path: Path) -> list[EvalQuestion]:
    """The questions of a JSON-lines file; raises `RagError` naming the first bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RagError("unreadable_document", f"cannot read {path}: {exc.strerror}") from exc
    questions = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                questions.append(EvalQuestion.model_validate_json(line))
            except ValidationError as exc:
                raise RagError("invalid_questions", f"{path}:{number}: {exc.errors()[0]['msg']}") from exc
    if not questions:
        raise RagError("invalid_questions", f"{path}: no questions")
    return questions


def evaluate(collection: Collection, questions: list[EvalQuestion], k: int = 5) -> EvalReport:
    """Ask every question of `collection` (after one warm-up search) and score the answers."""
    collection.search(questions[0].question, k)  # loads the model and the index: not timed
    results = []
    for q in questions:
        started = time.perf_counter()
        hits = collection.search(q.question, k)
        ms = (time.perf_counter() - started) * 1000.0
        rank = next((i for i, hit in enumerate(hits, start=1) if q.relevant(hit)), None)
        results.append(QuestionResult(question=q.question, rank=rank, ms=ms))
    latencies = sorted(r.ms for r in results)
    return EvalReport(
        questions=len(results), k=k,
        recall_at_k=sum(r.rank is not None for r in results) / len(results),
        mrr=sum(1.0 / r.rank for r in results if r.rank is not None) / len(results),
        p50_ms=statistics.median(latencies), p99_ms=percentile(latencies, 0.99),
        results=results,
    )


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values (nearest rank)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]
