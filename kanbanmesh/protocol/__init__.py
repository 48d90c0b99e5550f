"""The y-websocket wire protocol (pure codecs) and the transport seam."""

from __future__ import annotations

from kanbanmesh.protocol.channel import Channel
from kanbanmesh.protocol.codec import (
    AwarenessEntry,
    AwarenessMessage,
    Message,
    MessageType,
    QueryAwarenessMessage,
    SyncMessage,
    SyncStep,
    parse_message,
)

__all__ = [
    "AwarenessEntry",
    "AwarenessMessage",
    "Channel",
    "Message",
    "MessageType",
    "QueryAwarenessMessage",
    "SyncMessage",
    "SyncStep",
    "parse_message",
]
