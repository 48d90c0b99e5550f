"""What the SDK returns: snapshots of a board, and an embed task's vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from awareness.states import PeerPresence, WorkerPresence
from kanbanmesh.board.embeddings import decode_vectors
from kanbanmesh.board.schema import TaskEntry, Usage
from kanbanmesh.errors import InvalidTaskError

if TYPE_CHECKING:  # numpy only for embed results: the LibreOffice extension's Python has none
    import numpy as np
    import numpy.typing as npt


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


@dataclass(frozen=True)
class EmbedResult:
    """The vectors of a finished embed task, in the order of its inputs."""

    task_id: str
    vectors: npt.NDArray[np.float32]  # shape (inputs, dimensions), float32
    model: str  # the model asked for, else the one the worker serves ("" if unknown)
    usage: Usage

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def of_entry(cls, entry: TaskEntry, model: str = "") -> EmbedResult:
        """The vectors of a succeeded embed task's entry (`model` when it names none);
        raises `InvalidTaskError` for an entry without valid ones."""
        if entry.embeddings is None or entry.dimensions is None:
            raise InvalidTaskError(f"task {entry.id} holds no embeddings")
        if len(entry.embeddings) != len(entry.input or ()):
            raise InvalidTaskError(f"task {entry.id} holds {len(entry.embeddings)} vectors for "
                                   f"{len(entry.input or ())} inputs")
        vectors = decode_vectors(entry.embeddings, entry.dimensions)
        return cls(entry.id, vectors, entry.model or model, entry.usage or Usage())
