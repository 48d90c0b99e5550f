"""`kanbanmesh stats`: the board now, and the key figures of what finished in a window."""

from __future__ import annotations

import re

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from client_sdk import AsyncClient
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import ConfigurationError
from kanbanmesh.settings import Settings
from kanbanmesh.wire.kpis import BoardKpis

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> float:
    """`90`, `90s`, `30m`, `1h`, `7d` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise ConfigurationError(f"cannot read {text!r} as a time window (e.g. 90s, 30m, 1h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def render(client: AsyncClient, figures: BoardKpis, window: str) -> Group:
    now = Table(title=f"board {client.board} now", title_justify="left")
    for column in Column:
        now.add_column(column.value, justify="right")
    now.add_column("workers", justify="right")
    counts = client.peer.board.counts()
    workers = client.workers()
    now.add_row(*(str(counts[col]) for col in Column), f"{len(workers)} ({sum(w.slots for w in workers)} slots)")
    past = Table(title=f"finished in the last {window}: {figures.finished} "
                       f"({', '.join(f'{k} {v}' for k, v in sorted(figures.by_status.items())) or 'none'}), "
                       f"{figures.completion_tokens} tokens", title_justify="left")
    for name in ("", "tasks", "p50", "p95", "max"):
        past.add_column(name, justify="right" if name else "left")
    for label, dist in (("queue wait ms", figures.queued_ms), ("first token ms", figures.ttft_ms),
                        ("prompt ms", figures.prompt_ms), ("total ms", figures.total_ms),
                        ("tokens/s", figures.tokens_per_s)):
        past.add_row(label, str(dist.count), f"{dist.p50:.1f}", f"{dist.p95:.1f}", f"{dist.max:.1f}")
    if not figures.prompt_cache:
        return Group(now, past)
    cache = Table(title="prompt cache by worker", title_justify="left")
    for name in ("worker", "prompt tokens", "from cache", "hit rate"):
        cache.add_column(name, justify="left" if name == "worker" else "right")
    for worker, figure in sorted(figures.prompt_cache.items()):
        cache.add_row(worker, str(figure.prompt_tokens), str(figure.cached_tokens), f"{figure.hit_rate:.0%}")
    return Group(now, past, cache)


async def stats_async(settings: Settings, window: str, watch: bool) -> None:
    since_s = parse_window(window)
    console = Console()
    async with AsyncClient(settings.url, settings.board, token=settings.token) as client:
        if not watch:
            console.print(render(client, await client.stats(since_s), window))
            return
        with Live(console=console, auto_refresh=False) as live:
            while True:
                live.update(render(client, await client.stats(since_s), window), refresh=True)
                await client.wait_changed(1.0)


def run_stats(settings: Settings, window: str, watch: bool) -> None:
    anyio.run(stats_async, settings, window, watch)
