"""Giving freed memory back: safe to call at any time, from the event loop."""

from __future__ import annotations

import pytest

from kanbanmesh.server.memory import release_freed_memory

pytestmark = pytest.mark.anyio


async def test_release_freed_memory_returns() -> None:
    garbage = [bytearray(4096) for _ in range(2000)]
    del garbage
    await release_freed_memory()
