"""The task graph bookkeeping (kanbanmesh/board/graph.py) and its templates, as pure code."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kanbanmesh.board.graph import Decision, DependencyIndex, Verdict, cyclic, resolve
from kanbanmesh.board.prefix import task_turns
from kanbanmesh.board.schema import ChatMessage, TaskEntry, TaskRequest, TaskStatus
from kanbanmesh.board.templates import MAX_PARENTS, result_ref, result_refs, substitute

OUTCOMES = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """Tasks `t0..tn`, each after some of the tasks before it (so acyclic)."""
    n = draw(st.integers(1, 14))
    graph: dict[str, list[str]] = {}
    for i in range(n):
        earlier = [f"t{j}" for j in range(i)]
        graph[f"t{i}"] = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=4)) if earlier else []
    return graph


class Simulation:
    """The server's use of the index: tasks appear in order, runnable ones run in any order
    with a drawn outcome, waiting ones may be cancelled by their owner; a task that ends for
    whatever reason is reported as ended (as the room's finished listener does)."""

    def __init__(self, graph: dict[str, list[str]], outcomes: dict[str, TaskStatus]) -> None:
        self.graph = graph
        self.outcomes = outcomes
        self.index = DependencyIndex()
        self.ended: dict[str, TaskStatus] = {}
        self.ends: dict[str, int] = {}
        self.runnable: list[str] = []
        self.released_with: dict[str, dict[str, str]] = {}

    def result(self, task_id: str) -> str:
        return f"result of {task_id}"

    def apply(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            task = decision.task_id
            if decision.verdict is Verdict.READY:
                parents = self.graph[task]
                # Never released before every parent succeeded.
                assert all(self.ended.get(p) is TaskStatus.SUCCEEDED for p in parents), (task, self.ended)
                self.released_with[task] = self.index.results(task)
                self.index.forget(task)
                self.runnable.append(task)
                continue
            assert decision.parent in self.graph[task]
            assert self.ended[decision.parent] is (
                TaskStatus.CANCELLED if decision.verdict is Verdict.CANCELLED else TaskStatus.FAILED
            )
            status = TaskStatus.CANCELLED if decision.verdict is Verdict.CANCELLED else TaskStatus.FAILED
            self.end(task, status, cascaded=True)

    def end(self, task: str, status: TaskStatus, *, cascaded: bool = False) -> None:
        self.ends[task] = self.ends.get(task, 0) + 1
        self.ended[task] = status
        if cascaded:
            # The listener learns of it later; the index has decided its children already.
            assert self.index.ended(task, status) == []
        else:
            self.apply(self.index.ended(task, status, self.result(task)))

    def add(self, task: str) -> None:
        parents = self.graph[task]
        self.apply(self.index.wait(task, parents, refs=parents))
        for parent in parents:
            if parent in self.ended:
                self.apply(self.index.ended_for(task, parent, self.ended[parent], self.result(parent)))

    def run_one(self, pick: int) -> None:
        task = self.runnable.pop(pick % len(self.runnable))
        self.end(task, self.outcomes[task])

    def cancel_waiting(self, pick: int) -> bool:
        waiting = sorted(t for t in self.graph if t in self.index and t not in self.ended)
        if not waiting:
            return False
        self.end(waiting[pick % len(waiting)], TaskStatus.CANCELLED)
        return True


@settings(max_examples=300, deadline=None)
@given(graph=dags(), data=st.data())
def test_every_task_ends_once_and_succeeds_only_after_its_parents(graph: dict[str, list[str]], data: st.DataObject) -> None:
    outcomes = {t: data.draw(st.sampled_from(OUTCOMES)) for t in graph}
    sim = Simulation(graph, outcomes)
    pending = list(graph)
    while pending or sim.runnable:
        step = data.draw(st.sampled_from(["add", "run", "cancel"]))
        if step == "add" and pending:
            sim.add(pending.pop(0))
        elif step == "run" and sim.runnable:
            sim.run_one(data.draw(st.integers(0, 100)))
        elif step == "cancel" and sim.cancel_waiting(data.draw(st.integers(0, 100))):
            pass
        elif pending:
            sim.add(pending.pop(0))
        else:
            sim.run_one(0)
    assert set(sim.ends) == set(graph) and set(sim.ends.values()) == {1}
    assert len(sim.index) == 0
    for task, status in sim.ended.items():
        parents = graph[task]
        if status is TaskStatus.SUCCEEDED:
            assert all(sim.ended[p] is TaskStatus.SUCCEEDED for p in parents)
            assert sim.released_with[task] == {p: sim.result(p) for p in parents}
        if any(sim.ended[p] is not TaskStatus.SUCCEEDED for p in parents):
            assert status is not TaskStatus.SUCCEEDED


def test_a_failure_names_the_parent_and_the_chain() -> None:
    index = DependencyIndex()
    index.wait("c", ["p"])
    index.wait("g", ["c", "q"])
    decisions = index.ended("p", TaskStatus.FAILED)
    assert [(d.task_id, d.verdict, d.parent) for d in decisions] == [
        ("c", Verdict.FAILED, "p"), ("g", Verdict.FAILED, "c"),
    ]
    assert decisions[1].reason.startswith("parent task 'c' failed") and "'p' failed" in decisions[1].reason
    assert len(index) == 0 and index.children_of("q") == []


def test_an_edge_ends_for_one_child_only() -> None:
    index = DependencyIndex()
    index.wait("mine", ["p"])
    index.wait("theirs", ["p"])
    assert index.fail("theirs", "no task 'p' of this owner") == [
        Decision("theirs", Verdict.FAILED, "theirs", "no task 'p' of this owner")
    ]
    assert index.ended_for("mine", "p", TaskStatus.SUCCEEDED, "ok") == [Decision("mine", Verdict.READY, "p")]


@given(st.dictionaries(st.sampled_from("abcdefgh"), st.lists(st.sampled_from("abcdefghxy"), max_size=3), max_size=8))
def test_cyclic_finds_exactly_what_can_never_start(edges: dict[str, list[str]]) -> None:
    stuck = cyclic(edges)
    done: set[str] = set()
    changed = True
    while changed:  # what can start once every listed parent started (unlisted ones count as done)
        changed = False
        for task, parents in edges.items():
            if task not in done and all(p in done or p not in edges for p in parents):
                done.add(task)
                changed = True
    assert stuck == set(edges) - done


ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True)


@given(ids, st.dictionaries(ids, st.text(max_size=30), max_size=4), st.text(max_size=40))
def test_substitute_replaces_the_references_it_has_results_for(task_id: str, results: dict[str, str], text: str) -> None:
    template = f"{text}{result_ref(task_id)}{text}"
    assert task_id in result_refs([template])
    replaced = substitute(template, {**results, task_id: "R"})
    assert replaced == substitute(text, results) + "R" + substitute(text, results)
    # A result holding a reference is not expanded again.
    assert substitute(result_ref(task_id), {task_id: result_ref(task_id)}) == result_ref(task_id)


def test_resolve_replaces_messages_and_prompt() -> None:
    chat = TaskEntry(id="c", after=["a"], messages=[ChatMessage(role="user", content="x {{result:a}} y")],
                     after_results={"a": "A"})
    messages = resolve(chat).messages
    assert messages is not None and messages[0].content == "x A y"
    assert chat.messages is not None and chat.messages[0].content == "x {{result:a}} y"  # a copy
    bare = TaskEntry(id="c", after=["a"], prompt="{{result:a}}", after_results={"a": "A"})
    assert resolve(bare).prompt == "A"
    plain = TaskEntry(id="c", prompt="no graph")
    assert resolve(plain) is plain


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"prompt": "{{result:b}}", "after": ["a"]}, "not in `after`"),
        ({"prompt": "x", "after": ["c"]}, "itself"),
        ({"prompt": "x", "after": ["a", "a"]}, "twice"),
        ({"prompt": "x", "after": ["a b"]}, "pattern"),
        ({"prompt": "x", "after": "a"}, "list"),
        ({"prompt": "x", "after": [f"t{i}" for i in range(MAX_PARENTS + 1)]}, "at most"),
        ({"messages": [{"role": "user", "content": "{{result:z}}"}], "after": ["a"]}, "not in `after`"),
    ],
)
def test_after_is_checked_at_creation(fields: dict[str, object], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        TaskRequest.model_validate({"id": "c", **fields})


def test_a_task_without_after_keeps_its_text_as_it_is() -> None:
    # A chat about the template itself (through the OpenAI API, say) is no graph.
    entry = TaskEntry.model_validate({"id": "c", "prompt": "what does {{result:b}} mean?"})
    assert resolve(entry).prompt == "what does {{result:b}} mean?"


def test_a_graph_request_keeps_after() -> None:
    request = TaskRequest.model_validate({"id": "c", "prompt": "{{result:a}} and {{result:b}}", "after": ["a", "b"]})
    assert request.to_fields()["after"] == ["a", "b"]
    assert "after" not in TaskRequest.model_validate({"id": "d", "prompt": "x"}).to_fields()


def test_prefix_turns_are_those_of_the_replaced_text() -> None:
    # The broker routes by the turns the worker's model reads: with the results put in.
    fields = {"prompt": "sum {{result:a}}", "after": ["a"], "after_results": {"a": "A"}}
    entry = resolve(TaskEntry.model_validate({"id": "c", **fields}))
    assert task_turns(fields) == [(m.role, m.content) for m in entry.chat()] == [("user", "sum A")]
