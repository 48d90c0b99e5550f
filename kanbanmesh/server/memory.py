"""Giving memory the server freed back to the operating system.

A board that ran a big backlog leaves the server's heap full of small freed blocks (Yrs
allocates every item of the document, and of its twin, through the C allocator). glibc keeps
such blocks for reuse instead of returning them, so after a board rotation drops an old
generation the process's resident memory would stay at its peak. `malloc_trim(0)` hands every
wholly free page back; measured in docs/benchmarks.md (board growth).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import anyio


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _find_malloc_trim()


async def release_freed_memory() -> None:
    """Return the heap's free pages to the operating system (glibc; elsewhere a no-op).

    Runs in a worker thread: on a heap of a few GB it takes some milliseconds, and ctypes
    releases the GIL meanwhile, so the event loop keeps serving.
    """
    if _MALLOC_TRIM is not None:
        await anyio.to_thread.run_sync(_MALLOC_TRIM, 0)
