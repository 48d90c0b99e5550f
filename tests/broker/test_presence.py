"""Worker states the broker plans with are bounded; a state outside the bounds is ignored."""

from __future__ import annotations

from typing import Any

import pytest

from awareness.states import (
    MAX_CACHED_TOKENS,
    MAX_MODELS,
    MAX_NAME,
    MAX_SLOTS,
    WorkerStates,
    workers_from_states,
)
from kanbanmesh.board.prefix import MAX_DIGEST_ENTRIES


def worker(**fields: Any) -> dict[str, Any]:
    return {"role": "worker", "id": "w", "state": "ready", **fields}


def test_a_worker_within_the_bounds_is_seen() -> None:
    [seen] = workers_from_states({1: worker(slots=MAX_SLOTS, models=["m"] * MAX_MODELS, name="n" * MAX_NAME)})
    assert seen.slots == MAX_SLOTS


@pytest.mark.parametrize(
    "state",
    [
        worker(slots=MAX_SLOTS + 1),
        worker(slots=-1),
        worker(slots=1e9),
        worker(models=["m"] * (MAX_MODELS + 1)),
        worker(models=["m" * (MAX_NAME + 1)]),
        worker(name="n" * (MAX_NAME + 1)),
        worker(tasks=["t" * 129]),
        worker(id=""),
        worker(id="i" * 513),
        worker(state="sleeping"),
    ],
)
def test_a_worker_state_outside_the_bounds_is_ignored(state: dict[str, Any]) -> None:
    assert workers_from_states({1: state, 2: worker(id="other")})[0].id == "other"
    assert len(workers_from_states({1: state})) == 0


def test_states_that_are_not_objects_are_ignored() -> None:
    assert workers_from_states({1: ["worker"], 2: "worker", 3: worker()}) != []  # type: ignore[dict-item]


def digest(entries: int, tokens: int = 7) -> dict[str, int]:
    return {f"{i:016x}": tokens for i in range(entries)}


def test_a_cache_digest_within_the_bounds_is_kept() -> None:
    full = digest(MAX_DIGEST_ENTRIES, tokens=MAX_CACHED_TOKENS)
    [seen] = workers_from_states({1: worker(cache=full)})
    assert seen.cache == full
    # Numbers come as JSON has them: a whole float is a whole number.
    [seen] = workers_from_states({1: worker(cache={"00000000000000ab": 12.0})})
    assert seen.cache == {"00000000000000ab": 12} and type(seen.cache["00000000000000ab"]) is int
    [seen] = workers_from_states({1: worker()})
    assert seen.cache == {}


@pytest.mark.parametrize(
    "cache",
    [
        digest(MAX_DIGEST_ENTRIES + 1),
        {"00000000000000AB": 1},  # hexadecimal digits are lowercase
        {"00000000000000a": 1},  # 15 digits
        {"00000000000000abc": 1},
        {"zzzzzzzzzzzzzzzz": 1},
        {"00000000000000ab": -1},
        {"00000000000000ab": MAX_CACHED_TOKENS + 1},
        {"00000000000000ab": 1.5},
        {"00000000000000ab": True},
        {"00000000000000ab": "12"},
        {"00000000000000ab": None},
        {**digest(3), "bad": 1},
        ["00000000000000ab"],
        "00000000000000ab",
        None,
    ],
)
def test_a_cache_digest_out_of_bounds_is_dropped_but_the_worker_counts(cache: Any) -> None:
    [seen] = workers_from_states({1: worker(cache=cache, slots=2)})
    assert seen.cache == {} and seen.slots == 2


def test_worker_states_parse_only_the_states_that_changed() -> None:
    parsed = WorkerStates()
    states: dict[int, dict[str, Any]] = {
        1: worker(id="a"), 2: worker(id="b", slots=2), 3: {"role": "client"},
    }
    a, b = parsed.workers(states)
    states[2] = worker(id="b", slots=3)  # b announced: a new state object
    again_a, new_b = parsed.workers(states)
    assert again_a is a and new_b is not b and new_b.slots == 3
    del states[1]
    states[4] = worker(id="a", slots=5, cache={"00000000000000ab": 1})  # a, on a new client id
    assert {(w.id, w.slots) for w in parsed.workers(states)} == {("b", 3), ("a", 5)}
    assert parsed.workers(states) == workers_from_states(states)
