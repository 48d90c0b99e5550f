"""What the SDK returns: snapshots of a board."""

from __future__ import annotations

from pydantic import BaseModel, Field

from awareness.states import PeerPresence, WorkerPresence
from kanbanmesh.board.schema import TaskEntry


class BoardSnapshot(BaseModel):
    """A consistent copy of a board at one moment."""

    board: str
    todo: list[TaskEntry] = Field(default_factory=list)
    prepared: list[TaskEntry] = Field(default_factory=list)
    doing: list[TaskEntry] = Field(default_factory=list)
    done: list[TaskEntry] = Field(default_factory=list)
    workers: list[WorkerPresence] = Field(default_factory=list)
    peers: list[PeerPresence] = Field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "todo": len(self.todo),
            "prepared": len(self.prepared),
            "doing": len(self.doing),
            "done": len(self.done),
        }
