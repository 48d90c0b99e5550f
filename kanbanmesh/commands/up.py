"""`kanbanmesh up`: server, embedded broker and worker processes in one command.

Workers run as child processes (one model load each, real parallelism across cores): the LLM
workers (`--workers`, `--backend`) and the embedding workers (`--embedding-workers`: st-embed
on the bundled model, for embed tasks and `/v1/embeddings`); a worker that dies is restarted. SIGINT/SIGTERM stop the workers first, then the server,
which flushes the store before exiting.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import anyio
import click
from anyio.abc import Process

from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.commands.serve import describe_server
from kanbanmesh.commands.worker import make_backend
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings

log = logging.getLogger(__name__)


def worker_command(settings: Settings, url: str, index: int) -> list[str]:
    command = [
        sys.executable, "-m", "kanbanmesh", "worker",
        "--url", url, "--board", settings.board,
        "--backend", settings.backend, "--slots", str(settings.slots),
        "--name", f"{settings.backend}-{index + 1}",
        "--heartbeat-seconds", str(settings.heartbeat_s),
        "--drain-timeout", str(settings.drain_timeout_s),
    ]
    if settings.backend == "echo":
        command += ["--echo-delay", str(settings.echo_delay_ms)]
    if settings.backend == "llama":
        command += ["--n-ctx", str(settings.n_ctx), "--threads", str(settings.threads)]
        command += ["--chat-format", settings.chat_format] if settings.chat_format else []
        command += [] if settings.cache_prompt else ["--no-cache-prompt"]
        command += ["--cache-ram", str(settings.cache_ram_mb)] if settings.cache_ram_mb else []
        command += ["--flash-attn"] if settings.flash_attn else []
    if settings.backend == "openai":
        command += ["--base-url", settings.base_url]
        command += ["--api-key-env", settings.api_key_env] if settings.api_key_env else []
    if settings.model:
        command += ["--model", settings.model]
    return command


# Slots of each embedding worker: the tasks one round of its model may embed together.
EMBEDDING_SLOTS = 4


def embedding_worker_command(settings: Settings, url: str, index: int) -> list[str]:
    """An st-embed worker on the bundled model (`--model` names the LLM workers' model)."""
    command = [
        sys.executable, "-m", "kanbanmesh", "worker",
        "--url", url, "--board", settings.board,
        "--backend", "st-embed", "--slots", str(EMBEDDING_SLOTS),
        "--name", f"st-embed-{index + 1}",
        "--heartbeat-seconds", str(settings.heartbeat_s),
        "--drain-timeout", str(settings.drain_timeout_s),
    ]
    return command + (["--threads", str(settings.threads)] if settings.threads else [])


def check_embedding_backend(settings: Settings) -> str:
    """Fail before starting anything when the embedding workers could never start (the
    bundled model missing): the model is found, not loaded."""
    if settings.embedding_workers == 0:
        return "none"
    backend = make_backend(settings.model_copy(update={"backend": "st-embed", "model": ""}))
    return f"{backend.engine}: {', '.join(backend.models)}"


def check_backend(settings: Settings) -> str:
    """Fail before starting anything when the workers could never start (missing model, no
    chat format, no base URL): a supervisor would otherwise restart them forever."""
    if settings.workers == 0:
        return "none"
    if settings.backend == "llama":
        from worker.backends.llama import LlamaConfig, inspect_model

        return inspect_model(LlamaConfig(model=settings.model, chat_format=settings.chat_format))
    backend = make_backend(settings)
    return f"{backend.engine}: {', '.join(backend.models)}"


def worker_env(settings: Settings) -> dict[str, str]:
    """The workers' environment: with auth on, a worker token (in the environment, not on the
    command line, where every user of the machine could read it)."""
    env = dict(os.environ)
    secret = settings.auth_secret_value()
    if secret is not None:
        identity = Identity(subject="kanbanmesh-up", role=TokenRole.WORKER, boards=[settings.board])
        env["KANBANMESH_TOKEN"] = create_token(secret, identity, ttl_s=365 * 86400)
    return env


async def _supervise(command: list[str], env: dict[str, str], stopping: anyio.Event) -> None:
    delay = 0.5
    while not stopping.is_set():
        process: Process = await anyio.open_process(command, stdout=None, stderr=None, env=env)
        try:
            await process.wait()
        finally:
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(5, shield=True):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
        if stopping.is_set():
            return
        click.echo(f"a worker exited with code {process.returncode}; restarting", err=True)
        await anyio.sleep(delay)
        delay = min(delay * 2, 10.0)


async def up_async(settings: Settings) -> None:
    stopping = anyio.Event()
    model = check_backend(settings)
    embedding_model = check_embedding_backend(settings)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        click.echo(describe_server(settings, url))
        click.echo(f"  workers {settings.workers} × {model} ({settings.slots} slot(s) each)")
        if settings.embedding_workers:
            click.echo(f"  embedding workers {settings.embedding_workers} × {embedding_model} "
                       f"({EMBEDDING_SLOTS} slots each)")
        click.echo(f'\nTry:  kanbanmesh submit --url {url} "Tell me a joke"\n      kanbanmesh board --url {url} --watch')
        async with anyio.create_task_group() as workers:
            commands = [worker_command(settings, url, i) for i in range(settings.workers)]
            commands += [embedding_worker_command(settings, url, i) for i in range(settings.embedding_workers)]
            for command in commands:
                workers.start_soon(_supervise, command, worker_env(settings), stopping)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    click.echo(f"\n{signal.Signals(signum).name}: stopping workers and server", err=True)
                    break
            stopping.set()
            workers.cancel_scope.cancel()
        tg.cancel_scope.cancel()


def run_up(settings: Settings) -> None:
    anyio.run(up_async, settings)


__all__ = ["check_backend", "embedding_worker_command", "run_up", "worker_command"]
