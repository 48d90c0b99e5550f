"""Prompt prefixes kept in host memory after their sequence was taken for another prompt.

llama-server's `--cache-ram`: when a sequence's cached tokens are about to be cut for a new
prompt, their KV state (`llama_state_seq_get_data`) is kept here, least recently used first out
past the budget; a later prompt that starts with one of them gets it back
(`llama_state_seq_set_data`) instead of evaluating it again. A conversation that comes back
after its sequence served others then still hits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from worker.backends.llama_pool import MIN_SIMILARITY, common_prefix


class HostCache:
    """Sequence states by their tokens, within `capacity` bytes (0: keeps nothing)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self._size = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._size

    def put(self, tokens: Sequence[int], state: bytes) -> None:
        if not self.capacity or len(state) > self.capacity or not tokens:
            return
        key = tuple(tokens)
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= len(old)
        self._entries[key] = state
        self._size += len(state)
        while self._size > self.capacity:
            _, evicted = self._entries.popitem(last=False)
            self._size -= len(evicted)

    def take_longer(self, prompt: Sequence[int], than: int) -> tuple[tuple[int, ...], bytes] | None:
        """The kept state sharing the longest prefix with `prompt`, if it shares more than
        `than` tokens (what a sequence of the context offers already) and enough of the
        prompt; it leaves the cache (its sequence will hold it). The tokens, the state."""
        best, shared = None, than
        for key in self._entries:
            n = common_prefix(key, prompt)
            if n > shared:
                best, shared = key, n
        if best is None or shared < MIN_SIMILARITY * len(prompt):
            return None
        state = self._entries.pop(best)
        self._size -= len(state)
        self.hits += 1
        return best, state
