"""`SharedMerges`: a batch several peers wait on is merged once, and merged right."""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, Map

from kanbanmesh.server.connection import SharedMerges


def _updates(n: int) -> list[bytes]:
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    column = doc.get("todo", type=Map)
    for i in range(n):
        column[f"t{i}"] = Map({"id": f"t{i}", "prompt": "x" * i})
    return updates


def test_a_batch_handed_to_several_peers_is_merged_once_and_holds_every_update() -> None:
    updates = _updates(5)
    merges = SharedMerges()
    first = merges.merge(list(updates))
    assert merges.merge(list(updates)) is first  # the second peer's copy of the same batch
    doc: Doc[Any] = Doc()
    doc.apply_update(first)
    assert sorted(doc.get("todo", type=Map).keys()) == [f"t{i}" for i in range(5)]


def test_different_batches_are_merged_apart_and_old_results_are_dropped() -> None:
    updates = _updates(6)
    merges = SharedMerges(keep=2)
    a = merges.merge(updates[:2])
    b = merges.merge(updates[2:4])
    assert a != b
    merges.merge(updates[4:])  # a third batch: the oldest result is forgotten
    assert merges.merge(updates[:2]) is not a
    assert merges.merge([updates[0]]) is updates[0]  # a single update is sent as it is
