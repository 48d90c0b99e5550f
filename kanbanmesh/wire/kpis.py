"""Key figures of past work on a board: what finished since when, how fast.

Computed from the timings each finished task keeps (`done` entries and the archive), so the
figures of any past window can be asked for, not only what a metrics scraper happened to see.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from kanbanmesh.board import constants as c


class Distribution(BaseModel):
    count: int = 0
    p50: float = 0.0
    p95: float = 0.0
    max: float = 0.0


class BoardKpis(BaseModel):
    """What finished on a board in a window."""

    since_ms: float
    finished: int = 0
    by_status: dict[str, int] = {}
    by_model: dict[str, int] = {}
    completion_tokens: int = 0
    queued_ms: Distribution = Distribution()
    ttft_ms: Distribution = Distribution()
    total_ms: Distribution = Distribution()
    tokens_per_s: Distribution = Distribution()
    prompt_ms: Distribution = Distribution()
    # The prompt cache: prompt tokens, those a worker's cache held, by worker.
    prompt_cache: dict[str, PromptCache] = {}


class PromptCache(BaseModel):
    """One worker's prompt tokens and how many its prompt cache held."""

    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def kpis(entries: Iterable[dict[str, Any]], since_ms: float) -> BoardKpis:
    """The figures of the `entries` (finished tasks' fields) that finished at or after `since_ms`."""
    recent = [
        e for e in entries
        if _finite(e.get(c.F_FINISHED_AT)) and e[c.F_FINISHED_AT] >= since_ms
    ]
    timings: list[dict[str, Any]] = [
        e[c.F_TIMINGS] for e in recent if isinstance(e.get(c.F_TIMINGS), dict)
    ]
    tokens = 0
    caches: dict[str, PromptCache] = {}
    for entry in recent:
        usage = entry.get(c.F_USAGE)
        if isinstance(usage, dict) and _finite(usage.get("completion_tokens")):
            tokens += int(usage["completion_tokens"])
        worker = entry.get(c.F_WORKER)
        if isinstance(usage, dict) and isinstance(worker, str) and worker and _finite(usage.get("prompt_tokens")):
            cache = caches.setdefault(worker, PromptCache())
            cache.prompt_tokens += int(usage["prompt_tokens"])
            if _finite(usage.get("cached_tokens")):
                cache.cached_tokens += int(usage["cached_tokens"])
    return BoardKpis(
        since_ms=since_ms,
        finished=len(recent),
        by_status=dict(Counter(str(e.get(c.F_STATUS) or "unknown") for e in recent)),
        by_model=dict(Counter(str(e.get(c.F_MODEL) or "") or "any" for e in recent)),
        completion_tokens=tokens,
        queued_ms=_distribution(t.get("queued_ms") for t in timings),
        ttft_ms=_distribution(t.get("ttft_ms") for t in timings),
        total_ms=_distribution(t.get("total_ms") for t in timings),
        tokens_per_s=_distribution(t.get("tokens_per_s") for t in timings),
        prompt_ms=_distribution(t.get("prompt_ms") for t in timings),
        prompt_cache=caches,
    )


def _distribution(values: Iterable[Any]) -> Distribution:
    numbers = sorted(float(v) for v in values if _finite(v) and v > 0)
    if not numbers:
        return Distribution()
    p95 = numbers[min(len(numbers) - 1, round(0.95 * (len(numbers) - 1)))]
    return Distribution(count=len(numbers), p50=statistics.median(numbers), p95=p95, max=numbers[-1])


def _finite(value: Any) -> bool:
    """A number the figures can use: an archived entry of an older version may hold anything
    (a string, NaN, infinity), and one such entry must not cost the board its statistics."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
