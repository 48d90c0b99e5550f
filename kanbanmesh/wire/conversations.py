"""A conversation as the HTTP API sends it: its turns, and the summary of each conversation."""

from __future__ import annotations

from pydantic import BaseModel


class Turn(BaseModel):
    role: str
    content: str


class ConversationSummary(BaseModel):
    conversation: str
    turns: int
    updated_at: float  # ms
