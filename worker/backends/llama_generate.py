"""One generation on one `Llama`: synchronous, run in a thread of its own.

Kept free of async code so it can be tested on its own and so the event loop never waits on
llama.cpp. The caller passes `should_stop` (checked after every token: a cancel costs at most
the token being computed) and `emit` (called with each piece of text as it becomes final).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from llama_cpp import Llama

from kanbanmesh.board.schema import Usage
from kanbanmesh.errors import BackendError
from worker.backends.base import Finished
from worker.backends.chat_format import Prompt
from worker.backends.llama_loader import abort_when, is_end_of_generation
from worker.backends.sampling import Sampling
from worker.backends.text_stream import TextStream

_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"; seeds must stay below it


DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True)
class Decoding:
    """Sampling for llama.cpp with the defaults filled in.

    The defaults are llama-cpp-python's `create_chat_completion` ones, except two that keep a
    small model from looping: `repeat_penalty` 1.1 (llama.cpp's long-time default) and at most
    `DEFAULT_MAX_TOKENS` tokens when the request sets no `max_tokens` (a runaway answer would
    otherwise hold a slot until the context is full).
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stops: tuple[str, ...] = ()
    seed: int | None = None


def decoding_for(sampling: Sampling) -> Decoding:
    """llama.cpp sampling for a checked request; raises `BackendError("bad_params")`."""
    if sampling.seed is not None and not 0 <= sampling.seed < _RANDOM_SEED:
        raise BackendError("bad_params", f"seed must be between 0 and {_RANDOM_SEED - 1}")
    given = {k: v for k, v in sampling.model_dump(exclude_none=True).items() if k != "stop"}
    return Decoding(**given, stops=sampling.stop)


def run_generation(
    llama: Llama,
    prompt: Prompt,
    decoding: Decoding,
    should_stop: Callable[[], bool],
    emit: Callable[[str], None],
) -> Finished:
    """Generate for `prompt`, emitting text as it is produced; returns usage and finish reason.

    The signature ends like `threaded.Work`, so `partial(run_generation, llama, prompt,
    decoding)` runs in a `ThreadedRun`. Raises `BackendError("context_overflow")` when the
    prompt does not fit the context.
    """
    tokens = _prompt_tokens(llama, prompt)
    limit = min(decoding.max_tokens, llama.n_ctx() - len(tokens))
    # A fresh KV cache every time: reusing a cached prompt prefix evaluates the rest in a
    # different batch shape, which changes the floats, so the same seeded request would answer
    # differently depending on what this slot ran before.
    llama.reset()  # type: ignore[no-untyped-call]
    llama.set_seed(decoding.seed if decoding.seed is not None else secrets.randbelow(_RANDOM_SEED))
    text = TextStream(decoding.stops + prompt.stops)
    count = 0
    reason = "length"
    tokens_out = llama.generate(
        tokens,
        top_k=decoding.top_k,
        top_p=decoding.top_p,
        min_p=decoding.min_p,
        temp=decoding.temperature,
        repeat_penalty=decoding.repeat_penalty,
        presence_penalty=decoding.presence_penalty,
        frequency_penalty=decoding.frequency_penalty,
    )
    try:
        first = _first_token(llama, tokens_out, should_stop)
        for token in itertools.chain([first], tokens_out) if first is not None else ():
            if should_stop():
                reason = "cancelled"
                break
            if is_end_of_generation(llama, token) or token in prompt.stop_token_ids:
                reason = "stop"
                break
            count += 1
            piece = text.feed(llama.detokenize([token]))
            if piece:
                emit(piece)
            if text.stopped:
                reason = "stop"
                break
            if count >= limit:
                break
        if first is None:
            reason = "cancelled"
    finally:
        tokens_out.close()
    tail = text.finish()
    if tail:
        emit(tail)
    usage = Usage(prompt_tokens=len(tokens), completion_tokens=count, total_tokens=len(tokens) + count)
    return Finished(usage, reason)


def _prompt_tokens(llama: Llama, prompt: Prompt) -> list[int]:
    tokens = llama.tokenize(prompt.text.encode("utf-8"), add_bos=prompt.add_bos, special=True)
    if len(tokens) >= llama.n_ctx():
        raise BackendError(
            "context_overflow",
            f"the prompt is {len(tokens)} tokens but this worker's context holds {llama.n_ctx()} "
            "(answer included); shorten the prompt or start the worker with a larger --n-ctx",
        )
    return tokens


def _first_token(llama: Llama, tokens_out: Iterator[int], should_stop: Callable[[], bool]) -> int | None:
    """The first token, or None when cancelled while the prompt was being evaluated.

    Evaluating a long prompt takes seconds on a CPU, in one llama.cpp call; llama.cpp's abort
    callback lets a cancel interrupt it between two operations of the graph. The callback is
    removed before generation: it would cost a Python call per operation of every token.
    """
    with abort_when(llama, should_stop):
        try:
            return next(tokens_out)
        except RuntimeError:  # llama_decode returned 2: aborted
            if should_stop():
                return None
            raise
