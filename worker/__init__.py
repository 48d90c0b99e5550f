"""Workers: run LLM backends on the tasks a broker assigns them."""

from __future__ import annotations

from worker.service import Worker, WorkerSettings

__all__ = ["Worker", "WorkerSettings"]
