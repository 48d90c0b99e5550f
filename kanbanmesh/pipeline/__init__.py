"""Pre-inference middlewares: what runs on a new task before any worker may take it.

A middleware reads the task's request and writes fields into its entry (the conversation's
`history`, retrieved `context`); the server runs them in order, off the event loop, while the
entry carries the `enriching` marker that keeps brokers from assigning it
(`kanbanmesh.server.enrichment`). History and retrieval are the first two; agents or filters
for sensitive data plug in the same way.
"""

from __future__ import annotations

from kanbanmesh.pipeline.base import FieldReader, Middleware, PendingTask
from kanbanmesh.pipeline.history import HistoryMiddleware

__all__ = ["FieldReader", "HistoryMiddleware", "Middleware", "PendingTask"]
