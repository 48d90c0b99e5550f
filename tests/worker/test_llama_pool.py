"""Choosing a sequence for a prompt, and the host-memory cache of evicted prefixes: pure."""

from __future__ import annotations

from typing import NoReturn

from worker.backends.host_cache import HostCache
from worker.backends.llama_pool import SequencePool, common_prefix


def test_a_prompt_takes_the_free_sequence_holding_its_longest_prefix() -> None:
    pool = SequencePool(3)
    a, b, c = pool.sequences
    a.cached, b.cached = list(range(50)), [*range(20), 99]
    choice = pool.choose(list(range(60)))
    assert choice is not None and choice.slot is a and choice.reused == 50
    pool.take(choice)
    # a is busy now: b holds the next best prefix.
    choice = pool.choose(list(range(60)))
    assert choice is not None and choice.slot is b and choice.reused == 20
    assert c.cached == []


def test_too_little_in_common_takes_the_least_recently_used_and_reuses_nothing() -> None:
    pool = SequencePool(2)
    old, recent = pool.sequences
    old.cached = [1, 2, 3]
    pool.take(pool.choose([7]) or _fail())  # uses one (the LRU: old)
    pool.release(old)
    recent.cached = [5]
    choice = pool.choose([1, *range(100, 200)])  # 1 token shared of 101: under 10%
    assert choice is not None and choice.reused == 0
    assert choice.slot is recent  # least recently used


def test_the_last_prompt_token_is_always_read_again() -> None:
    pool = SequencePool(1)
    pool.sequences[0].cached = [1, 2, 3, 4]
    choice = pool.choose([1, 2, 3, 4])
    assert choice is not None and choice.reused == 3  # its logits give the first token
    assert pool.choose([1, 2, 3], reuse=False) is not None
    assert (pool.choose([1, 2, 3], reuse=False) or _fail()).reused == 0


def test_no_free_sequence_no_choice() -> None:
    pool = SequencePool(1)
    pool.take(pool.choose([1]) or _fail())
    assert pool.choose([1]) is None


def test_the_digest_lists_what_the_free_and_busy_sequences_hold() -> None:
    pool = SequencePool(2)
    pool.sequences[0].prefixes = [("a" * 16, 10), ("b" * 16, 40)]
    pool.sequences[1].prefixes = [("a" * 16, 12)]
    assert pool.digest() == {"a" * 16: 12, "b" * 16: 40}


def test_host_memory_keeps_prefixes_within_its_budget_and_gives_back_the_longest() -> None:
    cache = HostCache(capacity=100)
    cache.put([1, 2, 3, 4], b"x" * 40)
    cache.put([1, 2, 9], b"y" * 40)
    cache.put([5, 6], b"z" * 40)  # over the budget: the oldest goes
    assert len(cache) == 2 and cache.size == 80
    assert cache.take_longer([1, 2, 3, 4, 5], than=2) is None  # [1, 2, 3, 4] was evicted
    found = cache.take_longer([1, 2, 9, 10], than=1)
    assert found is not None and found[0] == (1, 2, 9) and found[1] == b"y" * 40
    assert len(cache) == 1 and cache.size == 40
    assert cache.take_longer([5, 6], than=2) is None  # no longer than what a sequence offers
    assert HostCache(0).take_longer([1], than=0) is None


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def _fail() -> NoReturn:
    raise AssertionError("expected a choice")
