"""A request's sampling for llama.cpp, with llama-cpp-python's defaults filled in."""

from __future__ import annotations

from dataclasses import dataclass

from kanbanmesh.errors import BackendError
from worker.backends.sampling import Sampling

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
    cache_prompt: bool = True  # reuse a cached prefix of the prompt (llama-server's default)


def decoding_for(sampling: Sampling) -> Decoding:
    """llama.cpp sampling for a checked request; raises `BackendError("bad_params")`."""
    if sampling.seed is not None and not 0 <= sampling.seed < _RANDOM_SEED:
        raise BackendError("bad_params", f"seed must be between 0 and {_RANDOM_SEED - 1}")
    # `logprobs` is no sampling: the engine reads it off the request (`Job.top_logprobs`).
    given = sampling.model_dump(exclude_none=True, exclude={"stop", "logprobs", "top_logprobs"})
    return Decoding(**given, stops=sampling.stop)
