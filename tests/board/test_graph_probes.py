"""Task graphs under hostile shapes: long chains and wide fans cost time in proportion to the
tasks, and a parent's result is put in once, never read as a template itself. Classes of
input (hypothesis), not examples."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanbanmesh.board.document import entry_from_fields
from kanbanmesh.board.graph import DependencyIndex, Verdict
from kanbanmesh.board.schema import TaskStatus
from kanbanmesh.board.templates import resolved_length, result_ref, substitute
from kanbanmesh.errors import InvalidTaskError

# Task ids as TASK_ID_PATTERN spells them.
ids = st.builds(str.__add__, st.sampled_from("aZ09"), st.text(alphabet="aZ09_.:-", max_size=12))


def test_a_long_chain_fails_in_time_linear_in_its_length() -> None:
    # Each task's reason quotes its parent's: were the quotes not cut as they are passed on, a
    # chain of N would build N reasons of up to N quotes (80,000 tasks: ~80 s on the loop).
    index = DependencyIndex()
    length = 80_000
    for i in range(1, length):
        index.wait(f"t{i}", [f"t{i - 1}"])
    started = time.perf_counter()
    decisions = index.ended("t0", TaskStatus.FAILED, None, "x" * 10_000)
    assert time.perf_counter() - started < 15
    assert len(decisions) == length - 1 and len(index) == 0
    assert all(d.verdict is Verdict.FAILED and len(d.reason) <= 400 for d in decisions)
    assert decisions[-1].reason.startswith(f"parent task 't{length - 2}' failed")


@given(parents=st.lists(ids, min_size=1, max_size=64, unique=True), data=st.data())
def test_a_result_is_put_in_once_and_never_expanded(parents: list[str], data: st.DataObject) -> None:
    # Results that themselves hold references, to these parents or to others.
    results = {p: data.draw(st.lists(st.one_of(st.text(max_size=8), ids.map(result_ref)), max_size=4).map("".join))
               for p in parents}
    text = "|".join(result_ref(p) for p in parents)
    assert substitute(text, results) == "|".join(results[p] for p in parents)


def test_a_wide_fan_in_decides_once_every_parent_ended() -> None:
    index = DependencyIndex()
    parents = [f"p{i}" for i in range(64)]
    children = [f"c{i}" for i in range(2000)]
    for child in children:
        index.wait(child, parents, refs=parents[:1])
    decided = [d for p in parents for d in index.ended(p, TaskStatus.SUCCEEDED, f"r-{p}")]
    assert sorted(d.task_id for d in decided) == sorted(children)
    assert all(d.verdict is Verdict.READY and d.parent == "p63" for d in decided)
    assert index.results("c0") == {"p0": "r-p0"}


@given(after=st.lists(ids, max_size=5, unique=True), named=st.lists(ids, min_size=1, max_size=5, unique=True))
def test_after_results_name_only_the_tasks_parents(after: list[str], named: list[str]) -> None:
    """Whoever writes the entry (an open server trusts every peer with the schema only): the
    results a worker puts into the text are never those of a task outside `after`."""
    fields = {"id": "child-x", "prompt": "{{result:" + named[0] + "}}", "after": after or None,
              "after_results": {name: "r" for name in named}}
    if after and set(named) <= set(after) and "child-x" not in after:
        assert entry_from_fields(fields).after_results == {name: "r" for name in named}
    else:
        with pytest.raises(InvalidTaskError):
            entry_from_fields(fields)


@given(parents=st.lists(ids, min_size=1, max_size=6, unique=True), data=st.data())
def test_the_resolved_length_is_that_of_the_replaced_text(parents: list[str], data: st.DataObject) -> None:
    results = {p: data.draw(st.text(max_size=30)) for p in data.draw(st.lists(st.sampled_from(parents), unique=True))}
    pieces = st.one_of(st.text(max_size=6), st.sampled_from(parents).map(result_ref), st.just("{{result:"))
    texts = data.draw(st.lists(st.lists(pieces, max_size=8).map("".join), max_size=3))
    assert resolved_length(texts, results) == sum(len(substitute(text, results)) for text in texts)
