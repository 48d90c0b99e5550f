"""Log probabilities of generated tokens, from a llama.cpp context's logits (OpenAI's shape).

Read only for a request that asks (`params.logprobs`): a log-softmax over the vocabulary per
token costs about a millisecond for a 50,000-token vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np

from kanbanmesh.board.tool_schema import TokenLogprob, TopLogprob


def token_logprob(
    ctx: Any, n_vocab: int, row: int, token: int, top: int, token_bytes: Callable[[int], bytes]
) -> TokenLogprob:
    """The chosen `token`'s log probability under the model's distribution at batch `row` (its
    raw logits, before any sampler), and the `top` likeliest tokens', likeliest first."""
    pointer = llama_cpp.llama_get_logits_ith(ctx, row)
    logits = np.ctypeslib.as_array(pointer, shape=(n_vocab,)).astype(np.float64)
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak).sum()))

    def item(candidate: int) -> TopLogprob:
        raw = token_bytes(candidate)
        return TopLogprob(token=raw.decode("utf-8", errors="replace"), logprob=float(logits[candidate]) - log_total,
                          bytes=list(raw))

    ranked: list[TopLogprob] = []
    if top:
        best = np.argpartition(-logits, top - 1)[:top].tolist()
        ranked = [item(int(t)) for t in sorted(best, key=lambda t: -logits[t])]
    chosen = item(token)
    return TokenLogprob(token=chosen.token, logprob=chosen.logprob, bytes=chosen.bytes, top_logprobs=ranked)
