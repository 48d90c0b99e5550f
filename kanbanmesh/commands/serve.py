"""`kanbanmesh serve`."""

from __future__ import annotations

import anyio
import click

from kanbanmesh.peer import http_base
from kanbanmesh.server.runner import serve
from kanbanmesh.server.web import BUILD_HINT, page_built
from kanbanmesh.settings import Settings


def describe_server(settings: Settings, url: str) -> str:
    http = http_base(url)
    lines = [
        f"kanbanmesh server on {url}  (boards: {url}/<board>, default board: {url}/default)",
        f"  page    {http}/" + ("  (the live board)" if page_built() else f"  (not built: {BUILD_HINT})"),
        f"  health  {http}/healthz",
        f"  data    {settings.data_dir if settings.persist else '(in memory, --no-persist)'}",
        f"  broker  {'embedded' if settings.embedded_broker else 'none (run `kanbanmesh broker`)'}",
    ]
    if settings.auth_secret_value() is None:
        lines.append(
            "  auth    OFF: anyone who reaches this port may read and write every board. Fine on "
            "your own machine; elsewhere set --auth-secret-file (see `kanbanmesh token create`)."
        )
    else:
        lines.append("  auth    on: every connection needs a token (`kanbanmesh token create`)")
    return "\n".join(lines)


def run_serve(settings: Settings) -> None:
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            url = await tg.start(_serve, settings)
            click.echo(describe_server(settings, url), err=False)

    anyio.run(main)


async def _serve(settings: Settings, *, task_status: anyio.abc.TaskStatus[str]) -> None:
    await serve(settings, handle_signals=True, task_status=task_status)
