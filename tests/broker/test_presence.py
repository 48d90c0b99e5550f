"""Worker states the broker plans with are bounded; a state outside the bounds is ignored."""

from __future__ import annotations

from typing import Any

import pytest

from awareness.states import MAX_MODELS, MAX_NAME, MAX_SLOTS, workers_from_states


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
