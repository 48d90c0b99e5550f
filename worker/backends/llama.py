"""The llama.cpp backend (llama-cpp-python): one `Llama` per slot, each generation in a thread.

A `Llama` is not thread-safe, so each slot owns one (the weights are memory-mapped, so the
model's memory is shared; each slot has its own KV cache). A generation takes a free `Llama`,
runs in a thread of its own (`threaded.ThreadedRun`) and gives the `Llama` back only once that
thread has ended, so a cancelled generation never overlaps the next one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from functools import partial
from typing import NoReturn

import anyio
from llama_cpp import Llama

from kanbanmesh.board.schema import ChatMessage, TaskParams
from kanbanmesh.errors import BackendError
from worker.backends.base import GenerationEvent, GenerationRequest, TextChunk
from worker.backends.chat_format import ChatFormat, resolve_chat_format
from worker.backends.llama_generate import decoding_for, run_generation
from worker.backends.llama_loader import (
    LoadOptions,
    extra_buffers_safe,
    load_llama,
    read_vocabulary,
)
from worker.backends.models import ModelFile, resolve_model
from worker.backends.sampling import sampling_from
from worker.backends.threaded import ThreadedRun

ENGINE = "llama.cpp"


@dataclass(frozen=True)
class LlamaConfig:
    """How a llama worker runs its model (from `--model`, `--chat-format`, `--n-ctx`, ...)."""

    model: str = ""  # a GGUF path; "" = the bundled default
    chat_format: str = ""  # "" = the GGUF's template
    n_ctx: int = 2048  # tokens per slot, prompt and answer together
    threads: int = 0  # llama.cpp threads per slot; 0 = `default_threads(slots)`
    slots: int = 1


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(slots: int) -> int:
    """llama.cpp threads per slot when not given: the usable cores but one, shared by the slots.

    llama.cpp's threads wait for each other after every operation, so one of them preempted by
    another thread stalls the whole step. The worker's event loop, the server and the clients
    wake up for every streamed token; with every core given to llama.cpp, 2 threads on 2 cores
    streamed at 0.45 to 0.66 of the direct rate, 1 thread at par (docs/benchmarks.md).
    """
    return max(1, (usable_cores() - 1) // slots)


class LlamaBackend:
    """Serves one GGUF model on `slots` llama.cpp contexts."""

    def __init__(self, config: LlamaConfig) -> None:
        if config.slots < 1 or config.n_ctx < 16 or config.threads < 0:
            raise BackendError("bad_config", "slots must be >= 1, n_ctx >= 16 and threads >= 0")
        self._config = config
        self._file: ModelFile = resolve_model(config.model)  # fails fast on a missing file
        self._threads = config.threads or default_threads(config.slots)
        self._free: list[Llama] = []
        self._loaded: list[Llama] = []
        self._format: ChatFormat | None = None

    @property
    def engine(self) -> str:
        return ENGINE

    @property
    def models(self) -> list[str]:
        return list(self._file.names)

    @property
    def chat_format(self) -> str:
        """The name of the chat format in use (known after `start()`)."""
        return self._format.name if self._format is not None else ""

    @property
    def threads(self) -> int:
        return self._threads

    async def start(self) -> None:
        """Load the model into every slot and warm it up; a second call does nothing."""
        if self._loaded:
            return
        self._loaded = await anyio.to_thread.run_sync(self._load)
        self._free = list(self._loaded)

    def _load(self) -> list[Llama]:
        # The chat format first: a model without one is refused before its weights load.
        self._format = _chat_format(self._file, self._config.chat_format)
        options = LoadOptions(self._config.n_ctx, self._threads, extra_buffers_safe())
        loaded: list[Llama] = []
        try:
            for _ in range(self._config.slots):
                loaded.append(load_llama(self._file.path, options))
                _warm_up(loaded[-1])
        except BaseException:
            for llama in loaded:
                llama.close()
            raise
        return loaded

    async def stop(self) -> None:
        loaded, self._loaded, self._free = self._loaded, [], []
        for llama in loaded:
            llama.close()

    def fits(self, messages: list[ChatMessage], params: TaskParams) -> bool:
        """Whether these turns leave room for an answer in a slot's context: up to `max_tokens`
        of it, but never less than half the context. The worker drops a conversation's oldest
        turns until they do. Called on the event loop: tokenizing reads only the vocabulary."""
        if self._format is None or not self._loaded:
            return True
        try:
            prompt = self._format.render(GenerationRequest(messages=messages, prompt=None, params=params))
            answer = decoding_for(sampling_from(params)).max_tokens
        except BackendError:
            return True  # generate() reports the problem with the task
        tokens = self._loaded[0].tokenize(prompt.text.encode("utf-8"), add_bos=prompt.add_bos, special=True)
        return len(tokens) + min(answer, self._config.n_ctx // 2) <= self._config.n_ctx

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if request.model and request.model not in self._file.names:
            raise BackendError(
                "model_not_found",
                f"this worker serves {', '.join(self._file.names)}, not {request.model!r}",
            )
        decoding = decoding_for(sampling_from(request.params))
        if self._format is None:
            raise BackendError("not_ready", "the model is not loaded (start() was not called)")
        prompt = self._format.render(request)
        if not self._free:  # the worker never runs more tasks than slots
            raise BackendError("busy", f"all {self._config.slots} slot(s) are busy")
        llama = self._free.pop()
        run = ThreadedRun(partial(run_generation, llama, prompt, decoding))
        try:
            run.start()
            while True:
                batch = await run.take()
                if batch.texts:
                    yield TextChunk("".join(batch.texts), tokens=len(batch.texts))
                if batch.error is not None:
                    _reraise(batch.error)
                if batch.finished is not None:
                    yield batch.finished
                    return
        finally:
            await run.stop()  # within one token; the Llama is free again only after this
            self._free.append(llama)


def inspect_model(config: LlamaConfig) -> str:
    """Check, without loading weights, that `config` would start: the file reads as a GGUF and
    has a chat format. Returns a description; raises `BackendError` as `start()` would."""
    file = resolve_model(config.model)
    chat = _chat_format(file, config.chat_format)
    return f"{ENGINE}: {', '.join(file.names)} (chat format {chat.name})"


def _chat_format(file: ModelFile, requested: str) -> ChatFormat:
    metadata, special = read_vocabulary(file.path)
    return resolve_chat_format(metadata, special, requested, model=file.path.name)


def _warm_up(llama: Llama) -> None:
    # The first decode of a fresh context is several times slower than the next ones
    # (allocations, page faults on the mapped weights): pay it here, not in the first task.
    llama.eval(llama.tokenize(b"Hello", add_bos=True, special=False))
    llama.reset()  # type: ignore[no-untyped-call]


def _reraise(error: BaseException) -> NoReturn:
    """Raise what the generation thread raised, llama.cpp errors as `BackendError`."""
    if isinstance(error, BackendError) or not isinstance(error, Exception):
        raise error
    raise BackendError("generation_failed", f"llama.cpp failed: {type(error).__name__}: {error}") from error
