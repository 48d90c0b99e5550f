"""Typed reading of pycrdt's change events, whose attributes are untyped slots."""

from __future__ import annotations

from typing import Any


def event_keys(event: Any) -> dict[str, dict[str, Any]]:
    """A map event's changed keys: `{key: {"action": "add"|"update"|"delete", ...}}`."""
    keys: dict[str, dict[str, Any]] = event.keys
    return keys


def event_path(event: Any) -> list[str | int]:
    """Where the changed type sits below the observed one (`[]` for the observed one itself)."""
    return list(event.path)

