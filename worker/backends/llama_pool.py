"""Which llama.cpp sequence a new prompt runs in: pure bookkeeping, no model.

A worker's context holds `slots` sequences, each with the tokens whose KV it has (`cached`). A
new prompt takes the free sequence whose cached tokens share the longest prefix with it, as
llama-server does (`--slot-prompt-similarity`, 0.10: the shared part must be at least that
share of the prompt), else the least recently used free one; only the tokens after the shared
prefix are then evaluated. Evicted prefixes may live on in host RAM (`HostCache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# A cached prefix is reused when it is at least this share of the new prompt (llama-server's
# default `--slot-prompt-similarity`).
MIN_SIMILARITY = 0.10


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The number of leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Slot:
    """One llama.cpp sequence of the context (a slot: one task at a time)."""

    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV the sequence holds
    last_used: int = 0  # a counter, not a clock: higher is more recent
    busy: bool = False
    # What the cached tokens are, as the broker names prefixes (kanbanmesh/board/prefix.py):
    # (prefix hash, tokens it covers), shortest first.
    prefixes: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Choice:
    """Where a prompt runs, and how many of its tokens are in that sequence already."""

    slot: Slot
    reused: int


class SequencePool:
    """The sequences of one context: who is free, what each holds."""

    def __init__(self, slots: int) -> None:
        self.sequences = [Slot(i) for i in range(slots)]
        self._clock = 0

    def free(self) -> list[Slot]:
        return [s for s in self.sequences if not s.busy]

    def choose(self, tokens: Sequence[int], *, reuse: bool = True) -> Choice | None:
        """The free sequence for `tokens` (None when all are busy), and how many of its cached
        tokens the prompt keeps. At least the last prompt token is always evaluated again, for
        the logits of the first generated one."""
        free = self.free()
        if not free:
            return None
        best, shared = None, 0
        if reuse:
            for slot in free:
                n = common_prefix(slot.cached, tokens)
                if n > shared:
                    best, shared = slot, n
            if best is not None and shared < MIN_SIMILARITY * len(tokens):
                best, shared = None, 0
        if best is None:
            best = min(free, key=lambda s: (s.last_used, s.seq_id))
            shared = 0
        return Choice(best, min(shared, len(tokens) - 1) if tokens else 0)

    def take(self, choice: Choice) -> None:
        """Mark the chosen sequence busy, its cache cut to what the prompt keeps."""
        slot = choice.slot
        slot.busy = True
        del slot.cached[choice.reused:]
        slot.prefixes = [(h, n) for h, n in slot.prefixes if n <= choice.reused]
        self._clock += 1
        slot.last_used = self._clock

    def release(self, slot: Slot) -> None:
        slot.busy = False
        self._clock += 1
        slot.last_used = self._clock

    def digest(self) -> dict[str, int]:
        """Every prefix the sequences hold, by hash: the tokens it covers (the most any holds)."""
        held: dict[str, int] = {}
        for slot in self.sequences:
            for prefix_hash, tokens in slot.prefixes:
                held[prefix_hash] = max(tokens, held.get(prefix_hash, 0))
        return held
