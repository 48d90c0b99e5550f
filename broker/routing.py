"""Which worker a task goes to, among those that can take it now: by prompt cache, unless the
load is uneven. Pure code: no document, no socket, no clock.

SGLang's cache-aware router is the reference (docs/protocol.md section 4.3). A worker
advertises the prefix hashes of the chats its sequences hold (`WorkerPresence.cache`,
`kanbanmesh.board.prefix`); a task's **match** on a worker is its longest run of leading turns
whose hash the worker advertises, with the tokens the worker says that run covers. The broker
knows a task's turns but not its tokens, so the match's **ratio** is its turns over the task's
turns. Then:

1. uneven load (the most loaded candidate holds more than `balance_abs` tasks more than the
   least loaded, and more than `balance_rel` times as many): the worker with the most free
   slots, so that one conversation's worker does not end up with every task;
2. else, a best ratio of at least `cache_threshold`: the worker with the best match (turns,
   then tokens; ties: most free slots, then the greatest id);
3. else the worker with the most free slots (ties: the greatest id), as without caches.

A worker that is full is no candidate, so a conversation's next turn goes to the worker that
holds it while that worker has room, and to another when it is full.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class RoutingPolicy:
    """Thresholds of the cache-aware choice (SGLang's names; its balance_abs default is 64,
    for GPU servers running hundreds of sequences: ours run a few)."""

    cache_threshold: float = 0.3  # the least ratio (matched turns / task turns) that counts
    balance_abs: int = 2  # load is uneven past this many tasks between candidates...
    balance_rel: float = 1.5  # ...and past this ratio


@dataclass(frozen=True, order=True)
class Match:
    """A task's longest cached prefix on one worker."""

    turns: int = 0  # leading turns of the task the worker holds
    tokens: int = 0  # the prompt tokens the worker says they cover


class Candidate(NamedTuple):
    """A worker that can take the task now."""

    id: str
    free: int  # slots it may still be given this round
    load: int  # tasks it holds, counting those given this round
    cache: Mapping[str, int]  # its advertised digest: prefix hash -> tokens


def match(prefixes: Sequence[str], cache: Mapping[str, int]) -> Match:
    """The longest of `prefixes` (a task's prefix hashes, shortest first) in `cache`."""
    if cache:
        for turns in range(len(prefixes), 0, -1):
            tokens = cache.get(prefixes[turns - 1])
            if tokens is not None:
                return Match(turns, tokens)
    return Match()


def uneven(loads: Sequence[int], policy: RoutingPolicy) -> bool:
    """Whether the candidates' loads are too far apart to follow caches."""
    most, least = max(loads), min(loads)
    return most - least > policy.balance_abs and most > least * policy.balance_rel


def choose(
    candidates: Sequence[Candidate], prefixes: Callable[[], Sequence[str]], policy: RoutingPolicy
) -> str:
    """The id of the candidate a task goes to (`candidates` is not empty); `prefixes` gives the
    task's prefix hashes, called only when a candidate advertises a cache (reading a task's
    turns costs, and most workers advertise none)."""
    least_loaded = max(candidates, key=lambda w: (w.free, w.id))
    if len(candidates) == 1 or not any(w.cache for w in candidates):
        return least_loaded.id
    if uneven([w.load for w in candidates], policy):
        return least_loaded.id
    hashes = prefixes()
    if not hashes:
        return least_loaded.id
    best, chosen = max(((match(hashes, w.cache), w) for w in candidates),
                       key=lambda scored: (scored[0], scored[1].free, scored[1].id))
    if best.turns and best.turns / len(hashes) >= policy.cache_threshold:
        return chosen.id
    return least_loaded.id
