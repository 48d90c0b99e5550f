"""Cache-aware routing: the pure choice among workers (`broker.routing`), and how the
scheduler's plan uses it (trust first, loads counted as the round gives tasks out)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from awareness.states import WorkerPresence
from broker.routing import Candidate, Match, RoutingPolicy, choose, match, uneven
from broker.scheduler import QueuedTask, TodoQueue, plan
from kanbanmesh.board.prefix import prefix_hashes

POLICY = RoutingPolicy()
# A conversation's turns, and the prefix hashes of a task continuing it.
CHAT = [("user", "hi"), ("assistant", "hello"), ("user", "and now?"), ("assistant", "now this"),
        ("user", "and then?")]
HASHES = prefix_hashes(CHAT)


def cached(turns: int, tokens: int = 100) -> dict[str, int]:
    """A digest holding the chat's first `turns` turns."""
    return {HASHES[turns - 1]: tokens}


def pick(*candidates: Candidate, policy: RoutingPolicy = POLICY) -> str:
    return choose(candidates, lambda: HASHES, policy)


def test_the_documented_hashes() -> None:
    # docs/protocol.md section 6 gives these for JavaScript implementations to check against.
    assert prefix_hashes([("user", "hi"), ("assistant", "hello"), ("user", "and now?")]) == [
        "072e9ccebdd8ac6a", "dbf545909540f16f", "6ae4fe9f5047b2e4",
    ]


def test_a_match_is_the_longest_cached_prefix_with_its_tokens() -> None:
    digest = {HASHES[0]: 10, HASHES[3]: 250, "ffffffffffffffff": 9}
    assert match(HASHES, digest) == Match(4, 250)
    assert match(HASHES, {HASHES[1]: 40}) == Match(2, 40)
    assert match(HASHES, {"ffffffffffffffff": 9}) == Match() == match(HASHES, {})
    assert match([], digest) == Match()
    # A task shorter than what is cached matches on its own turns only.
    assert match(HASHES[:2], digest) == Match(1, 10)


def test_the_best_match_wins_over_free_slots_and_a_greater_id() -> None:
    holder = Candidate("a", free=1, load=1, cache=cached(4))
    other = Candidate("z", free=2, load=0, cache={})
    assert pick(holder, other) == "a"


def test_below_the_threshold_the_most_free_slots_win() -> None:
    # 1 of 5 turns = 0.2 < 0.3: not worth an uneven spread.
    weak = Candidate("a", free=1, load=1, cache=cached(1))
    other = Candidate("b", free=2, load=0, cache={})
    assert pick(weak, other) == "b"
    assert pick(weak, other, policy=RoutingPolicy(cache_threshold=0.2)) == "a"
    # 2 of 5 = 0.4 is enough.
    assert pick(Candidate("a", 1, 1, cached(2)), other) == "a"


def test_uneven_load_falls_back_to_the_most_free_slots() -> None:
    loaded_holder = Candidate("a", free=1, load=7, cache=cached(4))
    light = Candidate("b", free=6, load=2, cache={})
    assert pick(loaded_holder, light) == "b"  # 5 more tasks than b, and 3.5 times as many
    # 3 more than b, but fewer than 1.5 times as many: even enough, the cache decides.
    busy_holder = Candidate("a", free=1, load=7, cache=cached(4))
    roomy = Candidate("b", free=4, load=5, cache={})
    assert pick(busy_holder, roomy) == "a"
    # Uneven, the rule is today's: the most free slots, even where that is the busier one.
    big_holder = Candidate("a", free=5, load=3, cache=cached(4))
    small = Candidate("b", free=1, load=0, cache={})
    assert pick(big_holder, small) == "a"
    assert pick(big_holder, Candidate("b", free=6, load=0, cache={})) == "b"


@pytest.mark.parametrize(("loads", "expected"), [
    ((3, 1), False),  # 2 apart: not more than balance_abs
    ((10, 7), False),  # 3 apart, but 10 < 7 * 1.5
    ((11, 7), True),
    ((3, 0), True),
    ((0, 0), False),
])
def test_uneven_needs_both_thresholds(loads: tuple[int, int], expected: bool) -> None:
    assert uneven(list(loads), POLICY) is expected


def test_ties_go_to_more_tokens_then_free_slots_then_the_greater_id() -> None:
    assert pick(Candidate("a", 1, 0, cached(4, 300)), Candidate("b", 1, 0, cached(4, 200))) == "a"
    assert pick(Candidate("a", 2, 0, cached(4)), Candidate("b", 1, 0, cached(4))) == "a"
    assert pick(Candidate("a", 1, 0, cached(4)), Candidate("b", 1, 0, cached(4))) == "b"
    # More turns beat more tokens.
    assert pick(Candidate("a", 1, 0, cached(2, 900)), Candidate("b", 1, 0, cached(4, 10))) == "b"


def test_the_turns_are_read_only_when_a_candidate_advertises_a_cache() -> None:
    calls: list[int] = []

    def prefixes() -> Sequence[str]:
        calls.append(1)
        return HASHES

    assert choose([Candidate("a", 1, 0, {}), Candidate("b", 1, 0, {})], prefixes, POLICY) == "b"
    assert choose([Candidate("a", 1, 0, cached(4))], prefixes, POLICY) == "a"
    assert calls == []
    holder_and_other = [Candidate("a", 1, 0, cached(4)), Candidate("b", 1, 0, {})]
    assert choose(holder_and_other, prefixes, POLICY) == "a"
    assert calls == [1]
    # A task without turns goes by load.
    assert choose(holder_and_other, list, POLICY) == "b"


# -- the plan --------------------------------------------------------------------------


def queue_of(*ids: str) -> TodoQueue:
    queue = TodoQueue()
    for i, task_id in enumerate(ids):
        queue.add(QueuedTask.make(task_id, "", 0, float(i)))
    return queue


def test_plan_sends_each_task_where_its_chat_is_cached() -> None:
    other_chat = prefix_hashes([("user", "bonjour"), ("assistant", "salut"), ("user", "ça va?")])
    turns = {"ours": HASHES, "theirs": other_chat, "new": prefix_hashes([("user", "fresh")])}
    a = WorkerPresence(id="a", slots=4, cache=cached(4))
    b = WorkerPresence(id="b", slots=4, cache={other_chat[1]: 50})
    assignments = plan(queue_of("ours", "theirs", "new"), [a, b], {}, prefixes=turns.__getitem__)
    assert sorted(assignments) == [("new", "b"), ("ours", "a"), ("theirs", "b")]
    # Without the turns, load alone: the greatest id first, then the most free slots.
    assert plan(queue_of("ours", "theirs"), [a, b], {}) == [("ours", "b"), ("theirs", "a")]


def test_plan_stops_following_the_cache_once_the_load_is_uneven() -> None:
    holder = WorkerPresence(id="a", slots=8, cache=cached(4))
    other = WorkerPresence(id="b", slots=8)
    ids = [f"t{i}" for i in range(6)]
    assignments = plan(queue_of(*ids), [holder, other], {}, prefixes=lambda _: HASHES)
    # a takes tasks until it holds 3 more than b (3 > 2 and 3 > 0 * 1.5), then b gets one.
    assert [w for _, w in assignments] == ["a", "a", "a", "b", "a", "b"]


def test_a_full_holder_is_no_candidate_and_trust_comes_before_the_cache() -> None:
    holder = WorkerPresence(id="a", slots=1, cache=cached(4))
    other = WorkerPresence(id="b", slots=1)
    assert plan(queue_of("t"), [holder, other], {"a": 1}, prefixes=lambda _: HASHES) == [("t", "b")]
    # a on probation (limit 1), b proven: b gets the task, then a the next.
    assert plan(queue_of("t", "u"), [holder, other], {}, limits={"a": 1},
                prefixes=lambda _: HASHES) == [("t", "b"), ("u", "a")]
