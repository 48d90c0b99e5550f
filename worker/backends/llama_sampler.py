"""A llama.cpp sampler chain per sequence, built as llama-cpp-python builds its own.

Each sequence samples its tokens with its own chain (its own seed and penalty history), from the
logits of its own row of the batch. The chain is the one `Llama.generate` uses, in the same
order and with the same arguments (`Llama._init_sampler`), so that a seeded or greedy request
gives what llama-cpp-python gives for the same prompt: penalties, then greedy at temperature 0,
else top-k, typical (1.0: off), top-p, min-p, temperature and the seeded draw.
"""

from __future__ import annotations

from typing import Any

import llama_cpp

from worker.backends.llama_generate import Decoding

# llama-cpp-python's `Llama.last_n_tokens_size`, which it passes as the penalties' window.
PENALTY_LAST_N = 64


class SamplerChain:
    """One sequence's sampler chain (freed with `close`)."""

    def __init__(self, decoding: Decoding, seed: int, n_vocab: int) -> None:
        params = llama_cpp.llama_sampler_chain_default_params()
        self._chain: Any = llama_cpp.llama_sampler_chain_init(params)
        add = self._add
        # As llama-cpp-python calls it (its binding passes the vocabulary size first).
        add(llama_cpp.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, decoding.repeat_penalty, decoding.frequency_penalty,
            decoding.presence_penalty,
        ))
        if decoding.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(decoding.top_k))
            add(llama_cpp.llama_sampler_init_typical(1.0, 1))
            add(llama_cpp.llama_sampler_init_top_p(decoding.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(decoding.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(decoding.temperature))
            add(llama_cpp.llama_sampler_init_dist(seed))

    def _add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: Any, index: int) -> int:
        """The next token from the logits of batch row `index` (accepted into the chain)."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
