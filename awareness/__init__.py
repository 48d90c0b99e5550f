"""Presence on a board: awareness state models and the server's registry of them."""

from __future__ import annotations

from awareness.registry import AwarenessConflictError, AwarenessRegistry
from awareness.states import PeerPresence, WorkerPresence, WorkerState, workers_from_states
from kanbanmesh.board.roles import PeerRole

__all__ = [
    "AwarenessConflictError",
    "AwarenessRegistry",
    "PeerPresence",
    "PeerRole",
    "WorkerPresence",
    "WorkerState",
    "workers_from_states",
]
