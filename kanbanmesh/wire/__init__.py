"""The models clients and the server share over HTTP: board figures and conversation turns."""

from __future__ import annotations

from kanbanmesh.wire.conversations import ConversationSummary, Turn
from kanbanmesh.wire.kpis import BoardKpis, Distribution, PromptCache, kpis

__all__ = ["BoardKpis", "ConversationSummary", "Distribution", "PromptCache", "Turn", "kpis"]
