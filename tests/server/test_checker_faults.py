"""The update check fails closed, whatever goes wrong inside it.

Faults are injected at every step of `UpdateValidator.check` (reading an entry, the bounds, the
schema, the shared-type and output reads, the pending check, the state-vector decoder, the
writer's rights) as the exceptions a hostile value or a bug can raise: RecursionError,
MemoryError, the errors of pycrdt, and a BaseException as pyo3's PanicException is. Properties,
for updates drawn from the fuzz harness's scripts (valid and invalid tasks, hostile values,
forged moves, missing dependencies), on a board holding tasks in every column:

- an update whose check met a fault is refused (an `UpdateRefused`, never the fault itself);
- the validator is left as if it had never seen it: the same update checked again without the
  fault gets the verdict a fresh validator of the same board gives (a resent update is checked
  as new, never taken for one already known);
- without a fault the verdict is the fresh validator's (accepted or refused).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Text

from kanbanmesh.board import constants as c
from kanbanmesh.board.limits import EntryLimits
from kanbanmesh.protocol import codec
from kanbanmesh.server import validation
from kanbanmesh.server.validation import UpdateChanges, UpdateRefused, UpdateValidator
from tests.server.test_fuzz import FUZZ_MAX_TASK_BYTES, DocScript, doc_scripts


class FakePanic(BaseException):
    """What pyo3 raises for a panic in Rust: a BaseException, not an Exception."""


FAULTS: tuple[type[BaseException], ...] = (
    RecursionError, MemoryError, RuntimeError, ValueError, KeyError, TypeError, OverflowError, FakePanic,
)
# The steps of the check, as names in kanbanmesh/server/validation.py, and the writer's rights.
STEPS = (
    "read_entry", "check_fields", "entry_from_fields", "shared_fields", "output_length",
    "root_count", "_refuse_pending", "decode_state_vector", "get_update", "authorize",
)
LIMITS = EntryLimits(max_task_bytes=FUZZ_MAX_TASK_BYTES, max_entry_bytes=4 * FUZZ_MAX_TASK_BYTES)
Verdict = tuple[str, int | None]


def board_doc() -> Doc[Any]:
    """A board with a task in every column, written as the mesh would."""
    doc: Doc[Any] = Doc()
    with doc.transaction():
        for column in c.COLUMNS:
            key = f"{column}-task"
            fields: dict[str, Any] = {c.F_ID: key, c.F_OWNER: "alice", c.F_PROMPT: "p", c.F_CREATED_AT: 1.0}
            if column != c.TODO:
                fields.update({c.F_WORKER: "w", c.F_ATTEMPT: 1})
            if column in (c.DOING, c.DONE):
                fields[c.F_OUTPUT] = Text("partial")
            if column == c.DONE:
                fields.update({c.F_STATUS: "succeeded", c.F_RESULT: "partial"})
            doc.get(column, type=Map)[key] = Map(fields)
    return doc


def copy_of(doc: Doc[Any]) -> Doc[Any]:
    copy: Doc[Any] = Doc()
    copy.apply_update(doc.get_update())
    return copy


def first_update(script: DocScript, board: Doc[Any]) -> bytes | None:
    for message in script.messages(board.get_update()):
        parsed = codec.parse_message(message)
        if isinstance(parsed, codec.SyncMessage) and parsed.step is not codec.SyncStep.STEP1:
            return parsed.payload
    return None


def allow(_changes: UpdateChanges) -> None:
    """The writer's rights: an admin's (anything the schema allows)."""


def verdict(validator: UpdateValidator, update: bytes, authorize: Callable[[UpdateChanges], None] = allow) -> Verdict:
    try:
        validator.check(update, authorize)
    except UpdateRefused as refused:
        return ("refused", refused.code)
    return ("accepted", None)


@contextmanager
def fault_at(step: str, nth: int, fault: type[BaseException]) -> Iterator[tuple[list[bool], Callable[[UpdateChanges], None]]]:
    """Make the `nth` call of `step` raise `fault`; yields a flag list (true once it fired)
    and the `authorize` to pass (the faulty one when `step` is "authorize")."""
    fired = [False]
    calls = [0]

    def maybe_raise() -> None:
        calls[0] += 1
        if calls[0] == nth + 1 and not fired[0]:
            fired[0] = True
            raise fault("injected")

    if step == "authorize":
        def authorize(changes: UpdateChanges) -> None:
            maybe_raise()

        yield fired, authorize
        return
    original = getattr(validation, step)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        maybe_raise()
        return original(*args, **kwargs)

    with mock.patch.object(validation, step, wrapper):
        yield fired, allow


@pytest.mark.parametrize("step", STEPS)
@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(script=doc_scripts("alice"), nth=st.integers(0, 1), fault=st.sampled_from(FAULTS))
def test_a_fault_inside_the_check_refuses_the_update_and_leaves_nothing_behind(
    step: str, script: DocScript, nth: int, fault: type[BaseException]
) -> None:
    board = board_doc()
    update = first_update(script, board)
    if update is None:
        return
    fresh = verdict(UpdateValidator(copy_of(board), LIMITS), update)
    validator = UpdateValidator(board, LIMITS)
    with fault_at(step, nth, fault) as (fired, authorize):
        faulty = verdict(validator, update, authorize)
    if fired[0]:
        assert faulty[0] == "refused", f"a {fault.__name__} in {step} let the update through"
    else:
        assert faulty[0] == fresh[0]
    if faulty[0] == "accepted":
        board.apply_update(update)  # as the room does after a check that passed
        fresh = verdict(UpdateValidator(copy_of(board), LIMITS), update)
    # Sent again, without the fault: checked as new, as a fresh validator would (an update
    # with several problems may be refused for another of them: the code may differ).
    assert verdict(validator, update)[0] == fresh[0]
    # And the validator still tells a good update from a bad one.
    assert verdict(validator, _new_task_update(board, "after-the-fault", valid=True)) == ("accepted", None)
    assert verdict(validator, _new_task_update(board, "bad-after-the-fault", valid=False))[0] == "refused"


def _new_task_update(board: Doc[Any], key: str, *, valid: bool) -> bytes:
    writer: Doc[Any] = Doc()
    writer.apply_update(board.get_update())
    before = writer.get_state()
    fields: dict[str, Any] = {c.F_ID: key, c.F_OWNER: "alice", c.F_CREATED_AT: 1.0}
    if valid:
        fields[c.F_PROMPT] = "hello"
    writer.get(c.TODO, type=Map)[key] = Map(fields)
    return writer.get_update(before)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_an_interrupt_is_not_swallowed_but_leaves_a_sound_validator(fault: type[BaseException]) -> None:
    """Whatever the check catches, the twin is rebuilt; an interrupt still propagates."""
    board = board_doc()
    validator = UpdateValidator(board, LIMITS)
    update = _new_task_update(board, "t", valid=True)
    with fault_at("check_fields", 0, fault) as (_, authorize):
        assert verdict(validator, update, authorize)[0] == "refused"
    with fault_at("check_fields", 0, KeyboardInterrupt) as (_, authorize), pytest.raises(KeyboardInterrupt):
        validator.check(update, authorize)
    assert verdict(validator, update) == ("accepted", None)
