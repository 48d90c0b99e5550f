"""Continuous batching on one llama.cpp context: every sequence of a worker in one decode a step.

One context holds `slots` sequences, each with its own KV stream (`kv_unified` off: a
sequence's attention never sees another's cells, so its output does not depend on what the
others run). The engine runs in a thread of its own. Each step puts the next token of every
generating sequence into one batch, fills what is left of it (`n_batch`) with a chunk of the
prompts still being read, decodes once, and samples each sequence's next token from its own row
with its own sampler chain: a long prompt holds the others' streams for one chunk at most, and
a cancel is honoured at the next step.

A new prompt goes to the free sequence that already holds the longest prefix of it
(`llama_pool`), and only the rest is evaluated; with `--cache-ram`, prefixes of sequences taken
for other prompts live on in host memory (`host_cache`) and come back when a prompt needs them.
A request with `cache_prompt` off starts from an empty sequence.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from kanbanmesh.board.schema import Usage
from kanbanmesh.board.tool_schema import Logprobs, TokenLogprob
from kanbanmesh.errors import BackendError
from worker.backends.base import Finished
from worker.backends.host_cache import HostCache
from worker.backends.llama_generate import Decoding
from worker.backends.llama_logprobs import token_logprob
from worker.backends.llama_pool import Choice, SequencePool, Slot, common_prefix
from worker.backends.llama_sampler import SamplerChain, free_sampler
from worker.backends.text_stream import TextStream

log = logging.getLogger(__name__)

_NO_ABORT = llama_cpp.ggml_abort_callback()  # a NULL function pointer: no callback

# A prompt read without the cache (`cache_prompt` off) is read in these chunks, each whole in
# one step, as llama-cpp-python's `Llama.eval` reads it (`n_batch` 512): the same rows per
# chunk give the same floats, so such an answer is llama-cpp-python's own (with flash attention
# on or off, as the engine runs). (Evaluated in other shapes, a prompt's last tokens give
# slightly different logits: a cached prefix leaves a short rest, one row after a fully cached
# prompt, and greedy answers then differ.)
PROMPT_BATCH = 512
# With the cache on, prompt tokens read in one step, all sequences together: what a long
# prompt may hold the other sequences' streams for (~0.5-1 s on one CPU thread for a small
# model; reading in chunks of this size took as long as in one batch here).
PREFILL_CHUNK = 128


# What a job's `emit` receives: text pieces, then one `Finished` or an exception.
Emitted = str | Finished | BaseException


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int  # tokens per sequence, prompt and answer together
    slots: int  # sequences (tasks at once)
    threads: int
    prompt_batch: int = PROMPT_BATCH
    prefill_chunk: int = PREFILL_CHUNK
    cache_ram_bytes: int = 0  # host memory for evicted prefixes (0: none)
    flash_attn: bool = False


@dataclass
class Job:
    """One generation: what the caller asked, and how far it got (engine thread only)."""

    tokens: list[int]
    decoding: Decoding
    seed: int
    stops: TextStream
    stop_token_ids: frozenset[int]
    emit: Callable[[Emitted], None]
    reuse: bool = True  # `cache_prompt`
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Called in the engine thread when the job ended with its sequence kept (not cancelled).
    on_done: Callable[[Slot, Job], None] | None = None
    # A grammar sampler (`llama_sampler.grammar_sampler`), the job's until its chain takes it.
    grammar: Any = None
    # With `params.logprobs`: how many of the likeliest tokens to give beside each chosen one.
    top_logprobs: int | None = None
    # Progress, set by the engine.
    slot: Slot | None = None
    sampler: SamplerChain | None = None
    evaluated: int = 0  # prompt tokens in the sequence (cached or decoded)
    cached: int = 0  # of which were there before (a prefix reused)
    next_token: int | None = None
    answer: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""  # what was emitted
    admitted_at: float = 0.0
    prompt_ms: float = 0.0


def _sequence_id(job: Job) -> int:
    return job.slot.seq_id if job.slot is not None else -1


class BatchEngine:
    """Serves generations for one model; `submit` from any thread, results through each job's
    `emit` (text pieces, then one `Finished`, or an exception)."""

    def __init__(self, model: Any, vocab: Any, config: EngineConfig) -> None:
        self._model, self._vocab, self._config = model, vocab, config
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        params = llama_cpp.llama_context_default_params()
        # One step: a whole prompt chunk beside the next token of every other sequence, in one
        # micro-batch (a split would cut a chunk into other shapes).
        self._capacity = config.prompt_batch + config.slots
        params.n_ctx = config.n_ctx * config.slots
        params.n_batch = self._capacity
        params.n_ubatch = self._capacity
        params.n_seq_max = config.slots
        params.kv_unified = False
        params.n_threads = config.threads
        params.n_threads_batch = config.threads
        params.no_perf = True
        # Flash attention (`--flash-attn`), as llama-server runs it on a CPU (its `auto` picks
        # it): a step of 16 generating sequences took ~20% less CPU than with the separate
        # attention kernels, and one sequence's a little less; but its floats differ, so it is
        # off unless asked, as in llama-cpp-python's `Llama`: an answer read without the cache
        # is then `Llama()`'s own, and with it `Llama(flash_attn=True)`'s.
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if config.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise BackendError("model_load_failed", "llama.cpp could not create a context")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self._capacity, 0, 1)
        self.pool = SequencePool(config.slots)
        self.host_cache = HostCache(config.cache_ram_bytes)
        self._pending: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._waiting: list[Job] = []
        self._active: list[Job] = []
        self._thread = threading.Thread(target=self._run, name="kanbanmesh-llama", daemon=True)
        # A cancel (or the engine's stop) interrupts the decode under way, between two
        # operations of its graph: llama.cpp then rolls the step back (status 2), and the
        # step is made again without the cancelled job.
        self._in_step: set[int] = set()  # ids of the jobs the decode under way serves
        # Only while a step reads prompt chunks: llama.cpp calls back into Python for every
        # operation of the graph, which costs a generating step ~5% for nothing (it is short).
        self._abort = False
        self._abort_callback = llama_cpp.ggml_abort_callback(lambda _data: self._abort)
        self._piece = ctypes.create_string_buffer(256)
        # What the step emits, handed over once every row is sampled (`_flush`): an emit wakes
        # the event loop, whose thread then takes the GIL at this thread's next llama.cpp call
        # and holds it for up to the switch interval (5 ms) a time, so emitting row by row
        # would make the step wait for the loop's work instead of overlapping it with the
        # next decode (which runs without the GIL).
        self._outbox: list[tuple[Callable[[Emitted], None], Emitted]] = []
        self.digest: dict[str, int] = {}  # what the sequences hold (`SequencePool.digest`)

    # -- the caller's side (any thread) --------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._pending.put(job)
        self._wake.set()

    def cancel(self, job: Job) -> None:
        job.cancelled.set()
        if id(job) in self._in_step:
            self._abort = True
        self._wake.set()

    def close(self) -> None:
        """Stop the thread (jobs still running end cancelled) and free the context."""
        self._stop.set()
        self._abort = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def forget_all(self) -> None:
        """Empty every free sequence (after the warm-up: it must leave nothing to reuse)."""
        for slot in self.pool.free():
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cached = []
            slot.prefixes = []
        self.digest = self.pool.digest()

    def graphs_reused(self) -> int:
        """How many decodes so far ran on the graph of the decode before (llama.cpp's count)."""
        return int(llama_cpp.llama_perf_context(self._ctx).n_reused)

    def sequence_tokens(self, seq_id: int) -> int:
        """How many positions sequence `seq_id` holds in the KV cache (0 when empty)."""
        return int(llama_cpp.llama_memory_seq_pos_max(self._memory, seq_id)) + 1

    # -- the engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._admit()
                self._drop_cancelled()
                self._flush()
                if not self._active:
                    self._wake.wait()
                    self._wake.clear()
                    continue
                self._step()
                self._flush()
        except BaseException as exc:
            log.exception("the llama engine stopped")
            self._flush()
            for job in self._active + self._waiting:
                job.emit(exc)
            self._active, self._waiting = [], []
            raise
        finally:
            for job in self._active + self._waiting:
                self._finish(job, "cancelled")
            self._flush()

    def _emit(self, job: Job, item: Emitted) -> None:
        self._outbox.append((job.emit, item))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        for emit, item in outbox:
            emit(item)

    def _admit(self) -> None:
        while True:
            try:
                self._waiting.append(self._pending.get_nowait())
            except queue.Empty:
                break
        still: list[Job] = []
        for job in self._waiting:
            if job.cancelled.is_set():
                _free_grammar(job)
                self._emit(job, Finished(Usage(prompt_tokens=len(job.tokens)), "cancelled"))
                continue
            choice = self.pool.choose(job.tokens, reuse=job.reuse)
            if choice is None:
                still.append(job)
                continue
            self._place(job, choice)
        self._waiting = still

    def _place(self, job: Job, choice: Choice) -> None:
        slot = choice.slot
        reused = choice.reused
        restored = self.host_cache.take_longer(job.tokens, reused) if job.reuse else None
        if restored is not None:
            tokens, state = restored
            if slot.cached:  # what the sequence held goes to host memory in its turn
                self._save_to_host(slot)
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            data = (ctypes.c_ubyte * len(state)).from_buffer_copy(state)
            if llama_cpp.llama_state_seq_set_data(self._ctx, data, len(state), slot.seq_id):
                slot.cached = list(tokens)
                slot.prefixes = []
                reused = min(common_prefix(tokens, job.tokens), len(job.tokens) - 1)
            else:  # the sequence was emptied for it: start from nothing
                slot.cached, slot.prefixes, reused = [], [], 0
            choice = Choice(slot, reused)
        elif slot.cached and reused < len(slot.cached) and self.host_cache.capacity:
            self._save_to_host(slot)  # a prefix about to be cut: keep it in host memory
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, reused, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            reused = 0
            choice = Choice(slot, 0)
        self.pool.take(choice)
        self.digest = self.pool.digest()
        job.slot = slot
        job.evaluated = job.cached = reused
        job.sampler = SamplerChain(job.decoding, job.seed, self._n_vocab, job.grammar)
        job.grammar = None
        job.admitted_at = time.perf_counter()
        self._active.append(job)

    def _save_to_host(self, slot: Slot) -> None:
        size = llama_cpp.llama_state_seq_get_size(self._ctx, slot.seq_id)
        if not size or size > self.host_cache.capacity:
            return
        buffer = (ctypes.c_ubyte * size)()
        written = llama_cpp.llama_state_seq_get_data(self._ctx, buffer, size, slot.seq_id)
        if written:
            self.host_cache.put(list(slot.cached), bytes(buffer)[:written])

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._active if j.cancelled.is_set()]:
            self._finish(job, "cancelled")

    def _step(self) -> None:
        capacity = self._capacity
        rows: list[tuple[Job, int]] = []  # jobs whose next token comes from this decode
        undo: list[tuple[Job, int, int, int | None]] = []  # (job, cached, evaluated, next token)
        n = 0
        # The next token of every generating sequence, in the order of their sequence ids:
        # llama.cpp reuses the last step's graph only for rows in that order (with the rows of
        # 16 sequences in another order it built the graph anew every step, ~30% more CPU).
        for job in sorted(self._active, key=_sequence_id):
            slot = job.slot
            if job.next_token is not None and slot is not None:
                undo.append((job, len(slot.cached), job.evaluated, job.next_token))
                self._put(n, job.next_token, len(slot.cached), slot.seq_id, True)
                slot.cached.append(job.next_token)
                rows.append((job, n))
                job.next_token = None
                n += 1
        generating = n
        budget = self._config.prefill_chunk  # cached prompts' tokens this step
        for job in self._active:  # then prompt chunks, oldest first, as far as they fit
            slot = job.slot
            if slot is None or job.evaluated >= len(job.tokens):
                continue
            left = len(job.tokens) - job.evaluated
            if job.reuse:
                take = min(left, budget, capacity - n)
            else:  # a whole chunk of llama-cpp-python's, or wait for the next step
                take = min(left, self._config.prompt_batch)
                if take > capacity - n:
                    continue
            if take <= 0:
                continue
            undo.append((job, len(slot.cached), job.evaluated, None))
            for i in range(take):
                token = job.tokens[job.evaluated + i]
                last = job.evaluated + i == len(job.tokens) - 1
                self._put(n, token, len(slot.cached), slot.seq_id, last)
                slot.cached.append(token)
                if last:
                    rows.append((job, n))
                n += 1
            job.evaluated += take
            if job.reuse:
                budget -= take
        if n == 0:
            return
        self._batch.n_tokens = n
        reading = n > generating  # the step reads prompt tokens: it may take a while
        if reading:
            llama_cpp.llama_set_abort_callback(self._ctx, self._abort_callback, None)
            self._in_step = {id(job) for job, *_ in undo}
        try:
            status = llama_cpp.llama_decode(self._ctx, self._batch)
        finally:
            if reading:
                self._in_step = set()
                llama_cpp.llama_set_abort_callback(self._ctx, _NO_ABORT, None)
        if status == 2:  # aborted: llama.cpp rolled the step back; so do we
            self._abort = False
            for job, cached, evaluated, next_token in undo:
                if job.slot is not None:
                    del job.slot.cached[cached:]
                job.evaluated = evaluated
                if next_token is not None:
                    job.next_token = next_token
            return
        if status != 0:
            failed = BackendError("generation_failed", f"llama.cpp could not decode (status {status})")
            for job in sorted(self._active, key=_sequence_id):
                self._release(job, clear=True)
                self._emit(job, failed)
            return
        for job, row in rows:
            self._sampled(job, row)

    def _put(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits

    def _sampled(self, job: Job, row: int) -> None:
        assert job.sampler is not None  # set when placed
        if not job.prompt_ms:
            job.prompt_ms = (time.perf_counter() - job.admitted_at) * 1000.0
        token = job.sampler.sample(self._ctx, row)
        if job.cancelled.is_set():
            self._finish(job, "cancelled")
            return
        if llama_cpp.llama_vocab_is_eog(self._vocab, token) or token in job.stop_token_ids:
            self._finish(job, "stop")
            return
        job.answer.append(token)
        if job.top_logprobs is not None:
            job.logprobs.append(token_logprob(self._ctx, self._n_vocab, row, token, job.top_logprobs,
                                              self._token_bytes))
        piece = job.stops.feed(self._token_bytes(token))
        if piece:
            job.text += piece
            self._emit(job, piece)
        if job.stops.stopped:
            self._finish(job, "stop")
        elif len(job.answer) >= self._limit(job):
            self._finish(job, "length")
        else:
            job.next_token = token

    def _limit(self, job: Job) -> int:
        return min(job.decoding.max_tokens, self._config.n_ctx - len(job.tokens))

    def _token_bytes(self, token: int) -> bytes:
        buffer = self._piece
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if n < 0:  # a piece longer than the buffer: make room and ask again
            buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:n]

    def _finish(self, job: Job, reason: str) -> None:
        tail = job.stops.finish()
        if tail:
            job.text += tail
            self._emit(job, tail)
        completion = len(job.answer)
        usage = Usage(prompt_tokens=len(job.tokens), completion_tokens=completion,
                      total_tokens=len(job.tokens) + completion, cached_tokens=job.cached)
        # The sequence is free before the caller learns the job ended: after `Finished`, a
        # next job never waits for it.
        self._release(job, clear=reason == "cancelled")
        logprobs = Logprobs(content=job.logprobs) if job.top_logprobs is not None else None
        self._emit(job, Finished(usage, reason, prompt_ms=job.prompt_ms, logprobs=logprobs))

    def _release(self, job: Job, *, clear: bool) -> None:
        _free_grammar(job)
        if job in self._active:
            self._active.remove(job)
        if job.sampler is not None:
            job.sampler.close()
            job.sampler = None
        slot = job.slot
        if slot is None:
            return
        if clear:  # a cancelled sequence gives its cells back at once
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cached = []
            slot.prefixes = []
        elif job.on_done is not None:
            job.on_done(slot, job)
        self.pool.release(slot)
        self.digest = self.pool.digest()  # replaced whole: the event loop reads it as it is


def _free_grammar(job: Job) -> None:
    """Free a job's grammar sampler that no chain took (the job ended before it was placed)."""
    if job.grammar is not None:
        free_sampler(job.grammar)
        job.grammar = None
