"""Task graphs: a task that waits for others (`after`) and builds on their results.

Pure code, no document, no socket. A task names the ids of its parents in `after` and may
refer to a parent's result in its messages (or prompt) as `{{result:ID}}`, ID one of `after`.
The server (kanbanmesh/server/graph.py) holds such a task in `todo`, out of every broker's
queue, until each parent has ended; then:

- every parent succeeded: it writes `after_results` (the results the task's text refers to)
  and lets the task be assigned; the worker runs the text with each reference replaced
  (`resolve`);
- a parent failed: the task fails, error code `dependency_failed`;
- a parent was cancelled: the task is cancelled, error code `dependency_failed`.

Either way the task's own children follow in turn (transitively). `DependencyIndex` is that
bookkeeping: which task waits for which, and what each finished parent means for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from kanbanmesh.board.schema import TaskEntry, TaskStatus
from kanbanmesh.board.templates import substitute

DEPENDENCY_FAILED = "dependency_failed"  # the error code of a task whose parent did not succeed
DEPENDENCY_TOO_LARGE = "dependency_too_large"  # the parents' results would not fit the task
_MAX_REASON = 400  # characters of a decision's reason (a long chain names only its start)


def resolve(task: TaskEntry) -> TaskEntry:
    """`task` as the model is to see it: its references replaced by `after_results` (the task
    itself when it holds none)."""
    results = task.after_results
    if not results:
        return task
    update: dict[str, Any] = {}
    if task.messages is not None:
        update["messages"] = [
            m.model_copy(update={"content": substitute(m.content, results)}) for m in task.messages
        ]
    if task.prompt is not None:
        update["prompt"] = substitute(task.prompt, results)
    return task.model_copy(update=update)


class Verdict(str, Enum):
    """What a waiting task's parents decided for it."""

    READY = "ready"  # every parent succeeded: the task may run
    FAILED = "failed"  # a parent failed (or is no task of the owner's): the task fails
    CANCELLED = "cancelled"  # a parent was cancelled: so is the task


@dataclass(frozen=True)
class Decision:
    """A waiting task's verdict; `parent` the one that decided it (READY: the last), `reason`
    a sentence for people (empty for READY)."""

    task_id: str
    verdict: Verdict
    parent: str
    reason: str = ""


@dataclass
class _Waiter:
    pending: set[str]  # parents not ended yet
    refs: frozenset[str]  # parents whose results the task's text refers to
    results: dict[str, str] = field(default_factory=dict)


class DependencyIndex:
    """Which task waits for which, kept as parents end. Costs per event are in proportion to
    the tasks involved, never to the board: a parent's end touches its own children only."""

    def __init__(self) -> None:
        self._waiting: dict[str, _Waiter] = {}
        self._children: dict[str, set[str]] = {}  # parent -> tasks waiting for it

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._waiting

    def waiting_for(self, task_id: str) -> set[str]:
        """The parents `task_id` still waits for (empty when it does not wait)."""
        waiter = self._waiting.get(task_id)
        return set(waiter.pending) if waiter is not None else set()

    def children_of(self, task_id: str) -> list[str]:
        """The tasks waiting for `task_id`."""
        return sorted(self._children.get(task_id, ()))

    def results(self, task_id: str) -> dict[str, str]:
        """The results gathered so far for the parents `task_id`'s text refers to."""
        waiter = self._waiting.get(task_id)
        return dict(waiter.results) if waiter is not None else {}

    def wait(self, task_id: str, pending: Iterable[str], refs: Iterable[str] = (),
             results: Mapping[str, str] | None = None) -> list[Decision]:
        """Task `task_id` waits for the parents `pending` (not ended, as far as the caller
        knows); `refs`: the parents whose results its text refers to, `results` those of them
        that succeeded already. With nothing pending it is READY at once."""
        waiter = _Waiter(set(pending), frozenset(refs), dict(results or {}))
        self._drop(task_id)
        self._waiting[task_id] = waiter
        for parent in waiter.pending:
            self._children.setdefault(parent, set()).add(task_id)
        if not waiter.pending:
            return [Decision(task_id, Verdict.READY, task_id)]
        return []

    def ended(self, parent: str, status: TaskStatus, result: str | None = None,
              reason: str = "") -> list[Decision]:
        """Task `parent` ended with `status` (`reason`: why, when it did not succeed): the
        decisions that brings about, for its children and, for those that fail or are
        cancelled with it, their children in turn. A task that ends stops waiting itself
        (cancelled by its owner while it waited, say). A READY task's gathered results stay
        readable (`results`) until `forget`."""
        self._drop(parent)
        children = sorted(self._children.pop(parent, ()))
        return self._cascade([(child, parent, status, result, reason) for child in children])

    def ended_for(self, child: str, parent: str, status: TaskStatus, result: str | None = None,
                  reason: str = "") -> list[Decision]:
        """As `ended`, for one child only: what `parent`'s end means for `child` alone (a
        parent found in the archive, which one child's owner may read and another's not)."""
        children = self._children.get(parent)
        if children is None or child not in children:
            return []
        return self._cascade([(child, parent, status, result, reason)])

    def fail(self, task_id: str, reason: str) -> list[Decision]:
        """Task `task_id` fails for a reason of its own (it waits for a task its owner has
        none of, or for itself through a cycle); its children fail with it."""
        if task_id not in self._waiting:
            return []
        self._drop(task_id)
        reason = reason[:_MAX_REASON]
        decisions = [Decision(task_id, Verdict.FAILED, task_id, reason)]
        children = sorted(self._children.pop(task_id, ()))
        return decisions + self._cascade(
            [(child, task_id, TaskStatus.FAILED, None, reason) for child in children]
        )

    def _cascade(self, edges: list[tuple[str, str, TaskStatus, str | None, str]]) -> list[Decision]:
        """Decide for each `(child, parent, status, result, reason)`: a parent ended."""
        decisions: list[Decision] = []
        while edges:
            child, parent, status, result, reason = edges.pop()
            waiter = self._waiting.get(child)
            if waiter is None or parent not in waiter.pending:
                continue
            waiter.pending.discard(parent)
            children = self._children.get(parent)
            if children is not None:
                children.discard(child)
                if not children:
                    del self._children[parent]
            if status is TaskStatus.SUCCEEDED:
                if parent in waiter.refs:
                    waiter.results[parent] = result or ""
                if not waiter.pending:
                    decisions.append(Decision(child, Verdict.READY, parent))
                continue
            verdict = Verdict.CANCELLED if status is TaskStatus.CANCELLED else Verdict.FAILED
            said = f"task {parent!r} {'was cancelled' if verdict is Verdict.CANCELLED else 'failed'}"
            # Cut before it is passed on: each grandchild's reason quotes its parent's, and a
            # chain of N tasks would otherwise build N reasons of up to N quotes each.
            said = (f"parent {said}: {reason}" if reason else f"parent {said}")[:_MAX_REASON]
            self._drop(child)
            decisions.append(Decision(child, verdict, parent, said))
            edges.extend((grandchild, child, status, None, said)
                         for grandchild in sorted(self._children.pop(child, ()), reverse=True))
        return decisions

    def forget(self, task_id: str) -> None:
        """Stop tracking `task_id` (a READY task once its results were taken)."""
        self._drop(task_id)

    def _drop(self, task_id: str) -> None:
        waiter = self._waiting.pop(task_id, None)
        if waiter is None:
            return
        for parent in waiter.pending:
            children = self._children.get(parent)
            if children is not None:
                children.discard(task_id)
                if not children:
                    del self._children[parent]


def cyclic(edges: Mapping[str, Iterable[str]]) -> set[str]:
    """Of the tasks `edges` maps to their parents, those on a cycle or waiting (through the
    others listed) for one: they could never run. Parents not listed count as acyclic."""
    pending = {task: {p for p in parents if p in edges} for task, parents in edges.items()}
    children: dict[str, list[str]] = {}
    for task, parents in pending.items():
        for parent in parents:
            children.setdefault(parent, []).append(task)
    free = [task for task, parents in pending.items() if not parents]
    while free:  # Kahn's algorithm: what never becomes free is stuck behind a cycle
        task = free.pop()
        del pending[task]
        for child in children.get(task, ()):
            parents = pending[child]
            parents.discard(task)
            if not parents:
                free.append(child)
    return set(pending)
