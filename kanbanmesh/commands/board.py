"""`kanbanmesh board [--watch]` and `kanbanmesh task show`."""

from __future__ import annotations

from typing import Any

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from client_sdk import AsyncClient, BoardSnapshot, TaskEntry
from kanbanmesh.board.transitions import Column
from kanbanmesh.settings import Settings

_SHOWN_PER_COLUMN = 12


def _preview(entry: TaskEntry) -> str:
    if entry.result:
        text = entry.result
    elif entry.output:
        text = entry.output
    elif entry.prompt is not None:
        text = entry.prompt
    else:
        text = entry.messages[-1].content if entry.messages else ""
    text = " ".join(text.split())
    return text if len(text) <= 48 else text[:47] + "…"


def render(snapshot: BoardSnapshot) -> Group:
    """The board as rich tables: one row per task (newest first), then the workers."""
    counts = snapshot.counts()
    tasks = Table(title=f"board {snapshot.board}: " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    for name in ("column", "id", "owner", "worker", "attempt", "status", "text"):
        tasks.add_column(name)
    for column in Column:
        entries: list[TaskEntry] = getattr(snapshot, column.value)
        entries = sorted(entries, key=lambda e: e.created_at, reverse=True)
        for entry in entries[:_SHOWN_PER_COLUMN]:
            tasks.add_row(
                column.value, entry.id[:12], entry.owner, (entry.worker or "")[:18],
                str(entry.attempt or ""), entry.status.value if entry.status else "",
                _preview(entry),
            )
        if len(entries) > _SHOWN_PER_COLUMN:
            tasks.add_row(column.value, f"… {len(entries) - _SHOWN_PER_COLUMN} more", "", "", "", "", "")
    workers = Table(title=f"workers ({len(snapshot.workers)})")
    for name in ("name", "id", "models", "state", "slots", "tasks", "engine"):
        workers.add_column(name)
    for w in sorted(snapshot.workers, key=lambda w: w.name):
        workers.add_row(w.name, w.id, ", ".join(w.models), w.state.value, str(w.slots),
                        ", ".join(t[:8] for t in w.tasks), w.engine)
    return Group(tasks, workers)


async def board_async(settings: Settings, watch: bool) -> None:
    console = Console()
    async with AsyncClient(settings.url, settings.board, token=settings.token) as client:
        if not watch:
            # Give presence a moment to arrive: it follows the document sync.
            with anyio.move_on_after(0.3):
                await client.peer.presence_changed.wait()
            console.print(render(client.snapshot()))
            return
        with Live(render(client.snapshot()), console=console, auto_refresh=False) as live:
            while True:
                with anyio.move_on_after(1.0):
                    await client.peer.changed.wait()
                live.update(render(client.snapshot()), refresh=True)
                await anyio.sleep(0.1)  # at most ~10 redraws a second, however busy the board


def run_board(settings: Settings, *, watch: bool) -> None:
    try:
        anyio.run(board_async, settings, watch)
    except KeyboardInterrupt:
        pass


async def show_task_async(settings: Settings, task_id: str) -> dict[str, Any]:
    async with AsyncClient(settings.url, settings.board, token=settings.token) as client:
        column, entry = await client.lookup(task_id)
        return {
            "column": column.value if column is not None else "archived",
            "entry": entry.model_dump(mode="json"),
        }


def show_task(settings: Settings, task_id: str) -> dict[str, Any]:
    return anyio.run(show_task_async, settings, task_id)
