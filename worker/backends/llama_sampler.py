"""A llama.cpp sampler chain per sequence, built as llama-cpp-python builds its own.

Each sequence samples its tokens with its own chain (its own seed and penalty history), from the
logits of its own row of the batch. The chain is the one `Llama.generate` uses, in the same
order and with the same arguments (`Llama._init_sampler`), so that a seeded or greedy request
gives what llama-cpp-python gives for the same prompt: penalties, then greedy at temperature 0,
else top-k, typical (1.0: off), top-p, min-p, temperature and the seeded draw.

A grammar (tool calls, structured output) is checked as llama.cpp's own common sampler checks
it: the chain picks a token, the grammar only says whether it allows that one, and only when it
does not is the grammar applied to the whole vocabulary and the token picked again. Applying a
grammar to every token of the vocabulary at every step cost a third of the speed here.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np

from kanbanmesh.errors import BackendError
from worker.backends.grammars import TRIGGER_PATTERN, Grammar
from worker.backends.llama_generate import Decoding

# llama-cpp-python's `Llama.last_n_tokens_size`, which it passes as the penalties' window.
PENALTY_LAST_N = 64
# `llama_token_data` as numpy lays it out, to fill a candidate array without a Python loop.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


class SamplerChain:
    """One sequence's sampler chain (freed with `close`)."""

    def __init__(self, decoding: Decoding, seed: int, n_vocab: int, grammar: Any = None) -> None:
        params = llama_cpp.llama_sampler_chain_default_params()
        self._chain: Any = llama_cpp.llama_sampler_chain_init(params)
        self._grammar: Any = grammar  # freed with the chain (`close`)
        self._n_vocab = n_vocab
        if grammar is not None:
            self._ids = np.arange(n_vocab, dtype=np.int32)
            self._candidates = np.zeros(n_vocab, dtype=_TOKEN_DATA)
            self._one = np.zeros(1, dtype=_TOKEN_DATA)
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

    def _add(self, sampler: Any) -> None:  # the chain owns it from here on
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: Any, index: int) -> int:
        """The next token from the logits of batch row `index` (accepted into the chain)."""
        if self._grammar is None:
            return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))
        pointer = llama_cpp.llama_get_logits_ith(ctx, index)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        token = self._pick(logits, grammar=False)
        one = self._one
        one["id"], one["logit"], one["p"] = token, logits[token], 0.0
        self._apply(self._grammar, one)
        if not np.isfinite(one["logit"][0]):  # refused: the grammar over the whole vocabulary
            token = self._pick(logits, grammar=True)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def _pick(self, logits: Any, *, grammar: bool) -> int:
        """The token the chain picks from `logits` (after the grammar, with `grammar`), not
        accepted yet."""
        candidates = self._candidates
        candidates["id"], candidates["logit"], candidates["p"] = self._ids, logits, 0.0
        if grammar:
            self._apply(self._grammar, candidates)
        array = self._apply(self._chain, candidates)
        if array.selected < 0:
            raise BackendError("generation_failed", "the sampler chain selected no token")
        return int(array.data[array.selected].id)

    @staticmethod
    def _apply(sampler: Any, candidates: Any) -> Any:
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(candidates),
            selected=-1, sorted=False,
        )
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        return array

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


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
