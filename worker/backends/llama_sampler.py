"""A llama.cpp sampler chain per sequence, built as llama-cpp-python builds its own.

Each sequence samples its tokens with its own chain (its own seed and penalty history), from the
logits of its own row of the batch. The chain is the one `Llama.generate` uses, in the same
order and with the same arguments (`Llama._init_sampler`), so that a seeded or greedy request
gives what llama-cpp-python gives for the same prompt: penalties, then greedy at temperature 0,
else top-k, typical (1.0: off), top-p, min-p, temperature and the seeded draw.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

from kanbanmesh.errors import BackendError
from worker.backends.grammars import TRIGGER_PATTERN, Grammar
from worker.backends.llama_generate import Decoding

# llama-cpp-python's `Llama.last_n_tokens_size`, which it passes as the penalties' window.
PENALTY_LAST_N = 64


class SamplerChain:
    """One sequence's sampler chain (freed with `close`)."""

    def __init__(self, decoding: Decoding, seed: int, n_vocab: int, grammar: Any = None) -> None:
        params = llama_cpp.llama_sampler_chain_default_params()
        self._chain: Any = llama_cpp.llama_sampler_chain_init(params)
        add = self._add
        if grammar is not None:
            # First: every later sampler then sees only what the grammar allows (after top-k,
            # the grammar could find no token it allows among the k).
            add(grammar)
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

    def _add(self, sampler: Any) -> None:  # the chain owns it from here on
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: Any, index: int) -> int:
        """The next token from the logits of batch row `index` (accepted into the chain)."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


def grammar_sampler(vocab: Any, grammar: Grammar) -> Any:
    """A llama.cpp grammar sampler for `grammar` (for `SamplerChain`, which frees it); raises
    `BackendError("bad_params")` when llama.cpp cannot parse the grammar."""
    text, root = grammar.text.encode("utf-8"), b"root"
    if grammar.lazy:
        patterns = (ctypes.c_char_p * 1)(TRIGGER_PATTERN.encode("utf-8"))
        sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
            vocab, text, root, patterns, 1, (llama_cpp.llama_token * 0)(), 0)
    else:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, text, root)
    if not sampler:
        raise BackendError("bad_params", "llama.cpp could not parse the grammar built from the task's JSON Schemas")
    return sampler


def free_sampler(sampler: Any) -> None:
    """Free a sampler no chain took."""
    llama_cpp.llama_sampler_free(sampler)
