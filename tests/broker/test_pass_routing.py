"""The broker's pass routes by prompt cache: a task whose turns extend a conversation a worker
advertises goes to that worker while it has room, to another when it is full. A local document
and presence set by the test, as in test_pass.py."""

from __future__ import annotations

from typing import Any

import pytest

from broker import Broker, BrokerSettings
from broker.routing import RoutingPolicy
from kanbanmesh.board.prefix import prefix_hashes
from kanbanmesh.board.transitions import Column
from tests.broker.test_pass import Clock, LocalView, held_by, start, submit

pytestmark = pytest.mark.anyio

FIRST = [("user", "my name is Ada"), ("assistant", "hello Ada")]
HISTORY = [{"role": role, "content": content} for role, content in FIRST]


def advertise(
    view: LocalView, worker_id: str, slots: int, cache: dict[str, int] | None = None
) -> None:
    """Announce (or announce again) a worker, with its cache digest."""
    state: dict[str, Any] = {"role": "worker", "id": worker_id, "slots": slots, "state": "ready"}
    if cache is not None:
        state["cache"] = cache
    known = [cid for cid, s in view.states.items() if s.get("id") == worker_id]
    view.states[known[0] if known else max(view.states, default=0) + 1] = state
    view._changed()


def holding_first_turn() -> dict[str, int]:
    """The digest of a worker that ran the conversation's first turn: its prompt, and the
    prompt with the answer."""
    return dict(zip(prefix_hashes(FIRST), (5, 9), strict=True))


def make_broker(view: LocalView, routing: RoutingPolicy | None = None) -> Broker:
    settings = BrokerSettings(orphan_grace_s=0.0, routing=routing or RoutingPolicy())
    broker = Broker(view, settings, clock=Clock())
    broker._tracker.attach()  # what `run` does first
    for worker in ("a", "b"):
        broker.health.started(worker)  # both proven: trust does not decide here
    return broker


async def test_the_next_turn_goes_to_the_worker_holding_the_conversation() -> None:
    view = LocalView()
    # "a" holds the first turn; without its cache, "b" (the greater id) would get the task.
    advertise(view, "a", slots=2, cache=holding_first_turn())
    advertise(view, "b", slots=2, cache={"0123456789abcdef": 50})
    broker = make_broker(view)
    submit(view, "turn2", history=HISTORY, prompt="what is my name?")
    broker.run_pass()
    assert held_by(view, "a") == ["turn2"]
    # A stock client sending the whole conversation in `messages` names the same prefixes.
    submit(view, "whole", messages=[*HISTORY, {"role": "user", "content": "and again?"}])
    submit(view, "unrelated", prompt="something else")
    broker.run_pass()
    assert held_by(view, "a") == ["turn2", "whole"]
    assert held_by(view, "b") == ["unrelated"]  # a matches nothing: the most free slots


async def test_with_the_holder_full_the_next_turn_goes_to_another_worker() -> None:
    view = LocalView()
    advertise(view, "a", slots=1, cache=holding_first_turn())
    advertise(view, "b", slots=1)
    broker = make_broker(view)
    submit(view, "long", history=HISTORY, prompt="tell me a long story")
    broker.run_pass()
    assert held_by(view, "a") == ["long"]
    start(view, "long")
    submit(view, "turn2", history=HISTORY, prompt="what is my name?")
    broker.run_pass()
    assert held_by(view, "b") == ["turn2"] and held_by(view, "a", Column.DOING) == ["long"]


async def test_routing_follows_the_digest_as_workers_announce_it() -> None:
    view = LocalView()
    advertise(view, "a", slots=4)
    advertise(view, "b", slots=4)
    broker = make_broker(view)
    submit(view, "before", history=HISTORY, prompt="q1")
    broker.run_pass()
    assert held_by(view, "b") == ["before"]  # nothing cached yet: load, then the greater id
    advertise(view, "a", slots=4, cache=holding_first_turn())
    submit(view, "after", history=HISTORY, prompt="q2")
    broker.run_pass()
    assert held_by(view, "a") == ["after"]
    # A digest out of bounds is dropped: routed by load again, the worker still serves.
    advertise(view, "a", slots=4, cache={**holding_first_turn(), "NOT-A-HASH": 1})
    submit(view, "dropped", history=HISTORY, prompt="q3")
    broker.run_pass()
    assert held_by(view, "b") == ["before", "dropped"]  # 3 free slots each: the greater id
    assert broker.stats.assigned == 3


async def test_a_high_threshold_turns_cache_routing_off() -> None:
    view = LocalView()
    advertise(view, "a", slots=2, cache=holding_first_turn())
    advertise(view, "b", slots=2)
    broker = make_broker(view, RoutingPolicy(cache_threshold=1.01))
    submit(view, "turn2", history=HISTORY, prompt="what is my name?")
    broker.run_pass()
    assert held_by(view, "b") == ["turn2"]
