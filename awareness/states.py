"""Awareness states: who is on a board, as pydantic models of the wire fields."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from kanbanmesh.board import constants as c

# Bounds on what a worker may announce. Awareness is open to any peer (a stock y-websocket
# client announces whatever it likes), and the broker plans with these values on every pass:
# a state outside them is ignored like any other invalid one, so its worker gets no task.
MAX_SLOTS = 1024
MAX_MODELS = 64  # model names one worker serves
MAX_NAME = 256  # characters of a name, a model name, an engine or a version
MAX_ID = 512  # characters of an id (`<token subject>/<name>` with auth on)
MAX_TASK_ID = 128  # as `kanbanmesh.board.schema.TASK_ID_PATTERN`

_Name = Annotated[str, StringConstraints(max_length=MAX_NAME)]
_TaskId = Annotated[str, StringConstraints(max_length=MAX_TASK_ID)]


class Role(str, Enum):
    """What a peer is; the `role` field of its awareness state."""

    WORKER = "worker"  # runs tasks assigned to it
    BROKER = "broker"  # assigns and repairs
    CLIENT = "client"  # submits and watches tasks


class WorkerState(str, Enum):
    """A worker's availability, as it announces it."""

    READY = "ready"  # has at least one free slot
    WORKING = "working"  # every slot is busy
    DRAINING = "draining"  # finishing its tasks, takes no new ones


class WorkerPresence(BaseModel):
    """A worker's awareness state."""

    model_config = ConfigDict(extra="allow")

    role: Role = Role.WORKER
    id: str = Field(min_length=1, max_length=MAX_ID)
    name: _Name = ""
    models: list[_Name] = Field(default_factory=list, max_length=MAX_MODELS)
    slots: int = Field(default=1, ge=0, le=MAX_SLOTS)
    state: WorkerState = WorkerState.READY
    tasks: list[_TaskId] = Field(default_factory=list, max_length=MAX_SLOTS)  # ids it runs
    engine: _Name = ""
    version: _Name = ""

    def serves(self, model: str) -> bool:
        """True when a task asking for `model` ("" = any) may run here."""
        return not model or model in self.models


class PeerPresence(BaseModel):
    """Any other peer's awareness state (broker, client)."""

    model_config = ConfigDict(extra="allow")

    role: Role
    id: str = ""
    name: str = ""


def workers_from_states(states: dict[int, dict[str, Any]]) -> list[WorkerPresence]:
    """The valid worker states among raw awareness states (others are ignored)."""
    workers = []
    for state in states.values():
        if not isinstance(state, dict) or state.get(c.A_ROLE) != Role.WORKER.value:
            continue
        try:
            workers.append(WorkerPresence.model_validate(state))
        except ValidationError:
            continue
    return workers
