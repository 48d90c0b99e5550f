"""Awareness states: who is on a board, as pydantic models of the wire fields."""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from kanbanmesh.board import constants as c
from kanbanmesh.board.prefix import HASH_CHARS, MAX_DIGEST_ENTRIES
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.board.schema import TaskKind

# Bounds on what a worker may announce. Awareness is open to any peer (a stock y-websocket
# client announces whatever it likes), and the broker plans with these values on every pass:
# a state outside them is ignored like any other invalid one, so its worker gets no task.
MAX_SLOTS = 1024
MAX_MODELS = 64  # model names one worker serves
MAX_NAME = 256  # characters of a name, a model name, an engine or a version
MAX_ID = 512  # characters of an id (`<token subject>/<name>` with auth on)
MAX_TASK_ID = 128  # as `kanbanmesh.board.schema.TASK_ID_PATTERN`
MAX_CACHED_TOKENS = 2**31  # tokens one advertised prefix may cover
MAX_KINDS = 8  # task kinds one worker runs
_HASH = re.compile(rf"[0-9a-f]{{{HASH_CHARS}}}")

_Name = Annotated[str, StringConstraints(max_length=MAX_NAME)]
_TaskId = Annotated[str, StringConstraints(max_length=MAX_TASK_ID)]


class WorkerState(str, Enum):
    """A worker's availability, as it announces it."""

    READY = "ready"  # has at least one free slot
    WORKING = "working"  # every slot is busy
    DRAINING = "draining"  # finishing its tasks, takes no new ones


class WorkerPresence(BaseModel):
    """A worker's awareness state."""

    model_config = ConfigDict(extra="allow")

    role: PeerRole = PeerRole.WORKER
    id: str = Field(min_length=1, max_length=MAX_ID)
    name: _Name = ""
    models: list[_Name] = Field(default_factory=list, max_length=MAX_MODELS)
    slots: int = Field(default=1, ge=0, le=MAX_SLOTS)
    state: WorkerState = WorkerState.READY
    tasks: list[_TaskId] = Field(default_factory=list, max_length=MAX_SLOTS)  # ids it runs
    engine: _Name = ""
    version: _Name = ""
    # Its prompt cache: prefix hash -> tokens covered (`kanbanmesh.board.prefix`). A digest out
    # of bounds is dropped, not the worker: it only steers routing (`broker.routing`).
    cache: dict[str, int] = Field(default_factory=dict)
    # The task kinds it runs (`TaskKind` values); a worker that names none runs chats, as
    # before kinds existed. A kind this version does not know draws no task.
    kinds: list[_Name] = Field(default_factory=lambda: [c.KIND_CHAT], max_length=MAX_KINDS)

    @field_validator("cache", mode="plain")
    @classmethod
    def _bounded_digest(cls, value: Any) -> dict[str, int]:
        return valid_digest(value) or {}

    def serves(self, model: str, kind: TaskKind = TaskKind.CHAT) -> bool:
        """True when a task of `kind` asking for `model` ("" = any) may run here."""
        return kind.value in self.kinds and (not model or model in self.models)


def valid_digest(value: Any) -> dict[str, int] | None:
    """`value` as a cache digest, None when it is not one: an object of at most
    `MAX_DIGEST_ENTRIES` prefix hashes (16 lowercase hexadecimal digits) to whole numbers of
    tokens, 0 to `MAX_CACHED_TOKENS`."""
    if not isinstance(value, dict) or len(value) > MAX_DIGEST_ENTRIES:
        return None
    digest: dict[str, int] = {}
    for key, tokens in value.items():
        if type(tokens) is float and tokens.is_integer():
            tokens = int(tokens)  # JSON has numbers, not integers
        if type(key) is not str or not _HASH.fullmatch(key) or type(tokens) is not int:
            return None
        if not 0 <= tokens <= MAX_CACHED_TOKENS:
            return None
        digest[key] = tokens
    return digest


class PeerPresence(BaseModel):
    """Any other peer's awareness state (broker, client)."""

    model_config = ConfigDict(extra="allow")

    role: PeerRole
    id: str = ""
    name: str = ""


def workers_from_states(states: dict[int, dict[str, Any]]) -> list[WorkerPresence]:
    """The valid worker states among raw awareness states (others are ignored)."""
    workers = []
    for state in states.values():
        worker = _worker(state)
        if worker is not None:
            workers.append(worker)
    return workers


class WorkerStates:
    """`workers_from_states` for a reader that asks after every presence change (the broker):
    a state it has parsed already (the same object: awareness replaces the state of a peer that
    announces, and keeps the others) is not parsed again. With a `cache` digest a state costs
    several times more to parse, and one worker's announcement would re-parse every worker."""

    def __init__(self) -> None:
        self._parsed: dict[int, tuple[dict[str, Any], WorkerPresence | None]] = {}

    def workers(self, states: dict[int, dict[str, Any]]) -> list[WorkerPresence]:
        parsed: dict[int, tuple[dict[str, Any], WorkerPresence | None]] = {}
        for cid, state in states.items():
            known = self._parsed.get(cid)
            if known is None or known[0] is not state:
                known = (state, _worker(state))
            parsed[cid] = known
        self._parsed = parsed  # states gone are forgotten
        return [worker for _, worker in parsed.values() if worker is not None]


def _worker(state: Any) -> WorkerPresence | None:
    if not isinstance(state, dict) or state.get(c.A_ROLE) != PeerRole.WORKER.value:
        return None
    try:
        return WorkerPresence.model_validate(state)
    except ValidationError:
        return None
