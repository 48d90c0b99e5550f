"""Awareness states: who is on a board, as pydantic models of the wire fields."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kanbanmesh.board import constants as c


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
    id: str = Field(min_length=1)
    name: str = ""
    models: list[str] = Field(default_factory=list)
    slots: int = Field(default=1, ge=0)
    state: WorkerState = WorkerState.READY
    tasks: list[str] = Field(default_factory=list)
    engine: str = ""
    version: str = ""

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
        if state.get(c.A_ROLE) != Role.WORKER.value:
            continue
        try:
            workers.append(WorkerPresence.model_validate(state))
        except ValidationError:
            continue
    return workers
