"""The llama.cpp backend: one context, every slot a sequence of it, continuous batching.

The model is loaded once and served by a `BatchEngine` (`llama_engine`) in a thread of its own:
`--slots N` sequences share one llama.cpp context, one decode a step carries the next token of
every generating sequence and prompt chunks of the new ones, and a prompt reuses the longest
prefix a free sequence already holds (`cache_prompt`, on by default as in llama-server; off for
a task with `params.cache_prompt: false`, or for every task with `--no-cache-prompt`). The event
loop only renders and tokenizes prompts and reads what the engine emits.

`llama_cpp._internals.LlamaModel` is no public API: llama-cpp-python is pinned to one version
in pyproject.toml, and tests/test_library_internals.py names what is used of it.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
import llama_cpp
from llama_cpp._internals import LlamaModel

from kanbanmesh.board.prefix import MAX_DIGEST_ENTRIES, prefix_hashes
from kanbanmesh.board.schema import ChatMessage, TaskParams
from kanbanmesh.errors import BackendError
from worker.backends.answer_check import AnswerCheck
from worker.backends.base import Finished, GenerationEvent, GenerationRequest, TextChunk
from worker.backends.chat_format import ChatFormat, Prompt, resolve_chat_format
from worker.backends.feed import Feed
from worker.backends.grammars import grammar_for
from worker.backends.llama_engine import BatchEngine, EngineConfig, Job
from worker.backends.llama_generate import Decoding, decoding_for
from worker.backends.llama_loader import extra_buffers_safe, read_vocabulary
from worker.backends.llama_pool import Slot
from worker.backends.llama_sampler import free_sampler, grammar_sampler
from worker.backends.models import ModelFile, resolve_model
from worker.backends.sampling import sampling_from
from worker.backends.text_stream import TextStream

ENGINE = "llama.cpp"
_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"; seeds stay below it


@dataclass(frozen=True)
class LlamaConfig:
    """How a llama worker runs its model (from `--model`, `--chat-format`, `--n-ctx`, ...)."""

    model: str = ""  # a GGUF path; "" = the bundled default
    chat_format: str = ""  # "" = the GGUF's template
    n_ctx: int = 2048  # tokens per slot, prompt and answer together
    threads: int = 0  # llama.cpp threads of the worker's context; 0 = `default_threads()`
    slots: int = 1  # sequences served at once, in one context
    cache_prompt: bool = True  # reuse cached prefixes (a task may still turn it off)
    cache_ram_mb: int = 0  # host memory for prefixes evicted from their sequence
    flash_attn: bool = False  # flash attention in the context (llama-cpp-python's default: off)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(slots: int = 1) -> int:
    """llama.cpp threads when not given: the usable cores but one (all slots share them).

    llama.cpp's threads wait for each other after every operation, so one of them preempted by
    another thread stalls the whole step. The worker's event loop, the server and the clients
    wake up for every streamed token; with every core given to llama.cpp, 2 threads on 2 cores
    streamed at 0.45 to 0.66 of the direct rate, 1 thread at par (docs/benchmarks.md).
    """
    del slots  # one context serves every slot
    return max(1, usable_cores() - 1)


def kv_cache_bytes(model: Any, tokens: int) -> int:
    """The KV cache `tokens` cells take for `model` (f16 keys and values, every layer)."""
    n_layer = llama_cpp.llama_model_n_layer(model)
    n_embd = llama_cpp.llama_model_n_embd(model)
    n_head = max(1, llama_cpp.llama_model_n_head(model))
    n_head_kv = llama_cpp.llama_model_n_head_kv(model)
    per_token = 2 * 2 * n_layer * (n_embd // n_head) * n_head_kv  # K and V, 2 bytes each
    return int(per_token * tokens)


class LlamaBackend:
    """Serves one GGUF model on one llama.cpp context of `slots` sequences."""

    def __init__(self, config: LlamaConfig) -> None:
        if config.slots < 1 or config.n_ctx < 16 or config.threads < 0 or config.cache_ram_mb < 0:
            raise BackendError("bad_config", "slots must be >= 1, n_ctx >= 16, threads and cache-ram >= 0")
        self._config = config
        self._file: ModelFile = resolve_model(config.model)  # fails fast on a missing file
        self._threads = config.threads or default_threads(config.slots)
        self._model: LlamaModel | None = None
        self._engine: BatchEngine | None = None
        self._format: ChatFormat | None = None
        self.memory_note = ""  # what the context holds, said at start

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

    @property
    def slots(self) -> int:
        return self._config.slots

    async def start(self) -> None:
        """Load the model, make the context and warm it up; a second call does nothing."""
        if self._engine is not None:
            return
        await anyio.to_thread.run_sync(self._load)

    def _load(self) -> None:
        # llama.cpp logs every step of loading to its callback, which llama-cpp-python routes
        # to this logger and prints unless told otherwise (as `Llama(verbose=False)` tells it).
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        # The chat format first: a model without one is refused before its weights load.
        self._format = _chat_format(self._file, self._config.chat_format)
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = extra_buffers_safe()  # never AMX's extra buffers (they crash)
        try:
            model = LlamaModel(path_model=str(self._file.path), params=params, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError("model_load_failed", f"cannot load {self._file.path.name} as a GGUF model: {exc}") from exc
        config = self._config
        try:
            engine = BatchEngine(model.model, model.vocab, EngineConfig(
                n_ctx=config.n_ctx, slots=config.slots, threads=self._threads,
                cache_ram_bytes=config.cache_ram_mb << 20, flash_attn=config.flash_attn,
            ))
        except BaseException:
            model.close()  # type: ignore[no-untyped-call]
            raise
        self._model, self._engine = model, engine
        engine.start()
        kv = kv_cache_bytes(model.model, config.n_ctx * config.slots)
        self.memory_note = (
            f"KV cache {kv / 2**20:.0f} MiB ({config.slots} sequence(s) x {config.n_ctx} tokens)"
            + (f", prompt cache in RAM up to {config.cache_ram_mb} MiB" if config.cache_ram_mb else "")
        )
        self._warm_up(engine)

    def _warm_up(self, engine: BatchEngine) -> None:
        # The first decode of a fresh context is several times slower than the next ones
        # (allocations, page faults on the mapped weights): pay it here, not in the first task.
        done: queue.SimpleQueue[object] = queue.SimpleQueue()
        tokens = self._tokenize(Prompt("Hello", add_bos=True))
        engine.submit(Job(tokens, Decoding(max_tokens=1, temperature=0.0), 0, TextStream(), frozenset(),
                          done.put, reuse=False))
        while not isinstance(done.get(), Finished | BaseException):
            pass
        engine.forget_all()

    async def stop(self) -> None:
        engine, self._engine = self._engine, None
        model, self._model = self._model, None
        if engine is not None:
            await anyio.to_thread.run_sync(engine.close)
        if model is not None:
            model.close()  # type: ignore[no-untyped-call]

    def _tokenize(self, prompt: Prompt) -> list[int]:
        assert self._model is not None  # loaded
        return list(self._model.tokenize(prompt.text.encode("utf-8"), add_bos=prompt.add_bos, special=True))

    def fits(self, messages: list[ChatMessage], params: TaskParams) -> bool:
        """Whether these turns leave room for an answer in a slot's context: up to `max_tokens`
        of it, but never less than half the context. The worker drops a conversation's oldest
        turns until they do. Called on the event loop: tokenizing reads only the vocabulary."""
        if self._format is None or self._model is None:
            return True
        try:
            prompt = self._format.render(GenerationRequest(messages=messages, prompt=None, params=params))
            answer = decoding_for(sampling_from(params)).max_tokens
        except BackendError:
            return True  # generate() reports the problem with the task
        return len(self._tokenize(prompt)) + min(answer, self._config.n_ctx // 2) <= self._config.n_ctx

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The tokens `request`'s prompt is read as (its chat format applied)."""
        if self._format is None:
            raise BackendError("not_ready", "the model is not loaded (start() was not called)")
        return self._tokenize(self._format.render(request))

    def sequences(self) -> list[int]:
        """How many tokens each sequence of the context holds in its KV cells, by sequence."""
        engine = self._engine
        return [engine.sequence_tokens(i) for i in range(self._config.slots)] if engine is not None else []

    def graphs_reused(self) -> int:
        """How many of the context's decodes reused the graph of the one before: every step
        of the same sequences generating should (llama.cpp then skips building the graph)."""
        engine = self._engine
        return engine.graphs_reused() if engine is not None else 0

    def cache_digest(self) -> dict[str, int]:
        """What the sequences hold, as prefix hashes of turns (kanbanmesh/board/prefix.py) and
        the tokens each covers: advertised in awareness for the broker's routing."""
        engine = self._engine
        if engine is None:
            return {}
        return dict(itertools.islice(engine.digest.items(), MAX_DIGEST_ENTRIES))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if request.model and request.model not in self._file.names:
            raise BackendError(
                "model_not_found",
                f"this worker serves {', '.join(self._file.names)}, not {request.model!r}",
            )
        sampling = sampling_from(request.params)
        decoding = decoding_for(sampling)
        engine = self._engine
        if self._format is None or engine is None:
            raise BackendError("not_ready", "the model is not loaded (start() was not called)")
        prompt = self._format.render(request)
        tokens = self._tokenize(prompt)
        if len(tokens) >= self._config.n_ctx:
            raise BackendError(
                "context_overflow",
                f"the prompt is {len(tokens)} tokens but this worker's context holds {self._config.n_ctx} "
                "(answer included); shorten the prompt or start the worker with a larger --n-ctx",
            )
        grammar = grammar_for(request)
        check = AnswerCheck.of(request)  # what the grammar cannot enforce, checked at the end
        answer: list[str] = []
        feed: Feed[str | Finished | BaseException] = Feed()
        seed = decoding.seed if decoding.seed is not None else secrets.randbelow(_RANDOM_SEED)
        job = Job(
            tokens, decoding, seed, TextStream(decoding.stops + prompt.stops), prompt.stop_token_ids,
            feed.put, reuse=self._config.cache_prompt and decoding.cache_prompt,
            on_done=_remember(request.turns, len(tokens)),
            top_logprobs=(sampling.top_logprobs or 0) if sampling.logprobs else None,
        )
        if grammar is not None:  # parsed here: a grammar llama.cpp refuses fails the task
            assert self._model is not None  # loaded (the engine is)
            job.grammar = grammar_sampler(self._model.vocab, grammar)
        try:
            engine.submit(job)
        except BaseException:
            if job.grammar is not None:
                free_sampler(job.grammar)
            raise
        finished = False
        try:
            while True:
                texts, end = await _take(feed)
                if texts:
                    answer.append("".join(texts))
                    yield TextChunk(answer[-1], tokens=len(texts))
                if isinstance(end, BaseException):
                    finished = True
                    _reraise(end)
                if end is not None:
                    finished = True
                    if check is not None:
                        check.check("".join(answer), end.finish_reason)
                    yield end
                    return
        finally:
            if not finished:  # closed early: the slot is free again once the engine says so
                engine.cancel(job)
                with anyio.CancelScope(shield=True):
                    while True:
                        _, end = await _take(feed)
                        if end is not None:
                            break


def _remember(turns: tuple[tuple[str, str], ...], prompt_tokens: int) -> Any:
    """What a finished job leaves its sequence holding, named as the broker names prefixes:
    the first turn, the prompt's turns, and those with the answer, each with the tokens it
    covers (the first turn's estimated by its share of the prompt's characters)."""

    def on_done(slot: Slot, job: Job) -> None:
        if not turns:
            slot.prefixes = []
            return
        hashes = prefix_hashes([*turns, ("assistant", job.text)])
        chars = sum(len(content) for _, content in turns) or 1
        first = max(1, prompt_tokens * len(turns[0][1]) // chars)
        slot.prefixes = [(hashes[0], min(first, prompt_tokens)), (hashes[-2], prompt_tokens),
                         (hashes[-1], len(slot.cached))]

    return on_done


async def _take(feed: Feed[str | Finished | BaseException]) -> tuple[list[str], Finished | BaseException | None]:
    """Everything the engine emitted for a job since the last look (at least one item): its
    text pieces, and its end if it came."""
    texts: list[str] = []
    for item in await feed.take():
        if not isinstance(item, str):
            return texts, item  # a job's end is its last item
        texts.append(item)
    return texts, None


def inspect_model(config: LlamaConfig) -> str:
    """Check, without loading weights, that `config` would start: the file reads as a GGUF and
    has a chat format. Returns a description; raises `BackendError` as `start()` would."""
    file = resolve_model(config.model)
    chat = _chat_format(file, config.chat_format)
    return f"{ENGINE}: {', '.join(file.names)} (chat format {chat.name})"


def _chat_format(file: ModelFile, requested: str) -> ChatFormat:
    metadata, special = read_vocabulary(file.path)
    return resolve_chat_format(metadata, special, requested, model=file.path.name)


def _reraise(error: BaseException) -> NoReturn:
    """Raise what the generation thread raised, llama.cpp errors as `BackendError`."""
    if isinstance(error, BackendError) or not isinstance(error, Exception):
        raise error
    raise BackendError("generation_failed", f"llama.cpp failed: {type(error).__name__}: {error}") from error
