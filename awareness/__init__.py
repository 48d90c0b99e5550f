"""Presence on a board: awareness state models and the server's registry of them."""

from __future__ import annotations

from awareness.registry import AwarenessConflictError, AwarenessRegistry
from awareness.states import PeerPresence, Role, WorkerPresence, WorkerState, workers_from_states

__all__ = [
    "AwarenessConflictError",
    "AwarenessRegistry",
    "PeerPresence",
    "Role",
    "WorkerPresence",
    "WorkerState",
    "workers_from_states",
]
