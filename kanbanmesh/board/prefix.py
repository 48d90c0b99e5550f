"""Hashes of the leading turns of a chat: what a worker's prompt cache holds, as the broker and
any other peer can compute it from a task's entry without the model's tokenizer.

A task's turns are its `history` (a conversation's earlier turns, written by the server), then
its `messages` (or its `prompt` as one user turn). After it ran, a worker's cache holds those
turns and the answer (an `assistant` turn). `prefix_hashes(turns)[k - 1]` names the first `k`
turns: the SHA-256 of `role U+001F content U+001E` for each, concatenated and UTF-8 encoded,
its first 16 hexadecimal digits. docs/protocol.md section 6 spells it for JavaScript.

A worker advertises in awareness (`cache`, an object) the hashes of what its sequences hold,
each with the number of tokens it covers; the broker sends a task to the worker that holds the
longest of its prefixes (`broker.routing`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from kanbanmesh.board import constants as c

HASH_CHARS = 16
_TURN_END = "\x1e"
_ROLE_END = "\x1f"
MAX_DIGEST_ENTRIES = 64  # hashes one worker may advertise (awareness is sent to every peer)


def prefix_hashes(turns: Iterable[tuple[str, str]]) -> list[str]:
    """The hash of every leading run of `turns` ((role, content) pairs), shortest first."""
    digest = hashlib.sha256()
    hashes = []
    for role, content in turns:
        digest.update(f"{role}{_ROLE_END}{content}{_TURN_END}".encode())
        hashes.append(digest.copy().hexdigest()[:HASH_CHARS])
    return hashes


def task_turns(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A task entry's turns as the model sees them, before any template: `history`, then
    `messages` (or `prompt` as one user turn); [] for an entry that holds neither."""
    turns: list[tuple[str, str]] = []
    for key in (c.F_HISTORY, c.F_MESSAGES):
        value = fields.get(key)
        if isinstance(value, list):
            turns.extend(
                # A null content (an assistant turn with only tool calls) reads as "", as the
                # worker's schema reads it.
                (str(m.get("role")), str(m.get("content") or "")) for m in value if isinstance(m, Mapping)
            )
    prompt = fields.get(c.F_PROMPT)
    if isinstance(prompt, str) and not isinstance(fields.get(c.F_MESSAGES), list):
        turns.append(("user", prompt))
    return turns
