"""`kanbanmesh worker`: load a backend, then serve it on a board until stopped.

The model is loaded before the first connection (a load failure exits with its reason and
status 1, before the worker is ever announced) and kept across reconnects. Only an unreachable
server is waited for; a server that refuses the worker ends the process with the reason and a
non-zero status, so a supervisor (`kanbanmesh up`, systemd) restarts it.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio
import click
from pycrdt import Map

from kanbanmesh.board import constants as c
from kanbanmesh.board.document import now_ms
from kanbanmesh.board.roles import PeerRole
from kanbanmesh.errors import ConfigurationError, ConnectError, ConnectionClosedError
from kanbanmesh.peer import BoardPeer
from kanbanmesh.settings import Settings
from worker.backends.base import Backend
from worker.backends.echo import EchoBackend
from worker.backends.embedding_base import EmbeddingBackend
from worker.service import Worker, WorkerSettings

if TYPE_CHECKING:
    from worker.backends.openai_http import OpenAIConfig

log = logging.getLogger(__name__)

# What a worker process serves: an LLM backend (chat tasks) or an embedding one (embed tasks).
AnyBackend = Backend | EmbeddingBackend


def make_backend(settings: Settings, environ: Mapping[str, str] | None = None) -> AnyBackend:
    """The backend named by `--backend`, configured from the settings (not started)."""
    if settings.embedding and settings.backend != "st-embed":  # st-embed embeds anyway
        return make_embedding_backend(settings, environ)
    if settings.backend == "echo":
        return EchoBackend(delay_ms=settings.echo_delay_ms)
    if settings.backend == "openai":
        return _openai_backend(settings, os.environ if environ is None else environ)
    if settings.backend == "st-embed":
        return _st_embed_backend(settings)
    # Imported here: llama_cpp takes a moment to import and the other backends do not need it.
    from worker.backends.llama import LlamaBackend, LlamaConfig

    return LlamaBackend(LlamaConfig(
        model=settings.model, chat_format=settings.chat_format, n_ctx=settings.n_ctx,
        threads=settings.threads, slots=settings.slots, cache_prompt=settings.cache_prompt,
        cache_ram_mb=settings.cache_ram_mb, flash_attn=settings.flash_attn,
    ))


def make_embedding_backend(settings: Settings, environ: Mapping[str, str] | None = None) -> EmbeddingBackend:
    """The embedding backend of `--backend llama|openai --embedding` (not started)."""
    if settings.backend == "llama":
        from worker.backends.llama_embed import LlamaEmbedBackend, LlamaEmbedConfig

        return LlamaEmbedBackend(LlamaEmbedConfig(model=settings.model, n_ctx=settings.n_ctx,
                                                  threads=settings.threads))
    if settings.backend == "openai":
        from worker.backends.openai_embed import OpenAIEmbedBackend

        return OpenAIEmbedBackend(_openai_config(settings, os.environ if environ is None else environ))
    raise ConfigurationError(f"--embedding works with --backend llama or openai, not {settings.backend}")


def _openai_backend(settings: Settings, environ: Mapping[str, str]) -> Backend:
    from worker.backends.openai_http import OpenAIBackend

    return OpenAIBackend(_openai_config(settings, environ))


def _openai_config(settings: Settings, environ: Mapping[str, str]) -> OpenAIConfig:
    from worker.backends.openai_http import OpenAIConfig

    if not settings.base_url:
        raise ConfigurationError("the openai backend needs --base-url (e.g. http://127.0.0.1:8080/v1)")
    api_key = None
    if settings.api_key_env:
        api_key = environ.get(settings.api_key_env)
        if not api_key:
            raise ConfigurationError(f"--api-key-env names {settings.api_key_env}, which is not set")
    return OpenAIConfig(base_url=settings.base_url, model=settings.model, api_key=api_key)


def _st_embed_backend(settings: Settings) -> EmbeddingBackend:
    # Offline for good (the CLI is the process's edge): huggingface_hub reads this when it is
    # imported, with the model, and then never asks the hub for anything.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Imported here: torch takes seconds to import and only this backend needs it.
    from worker.backends.st_embed import SentenceTransformerBackend

    return SentenceTransformerBackend(settings.model, threads=settings.threads)


def describe_backend(backend: AnyBackend) -> str:
    details = f"{backend.engine}: {', '.join(backend.models)}"
    chat_format = getattr(backend, "chat_format", "")
    threads = getattr(backend, "threads", 0)
    extra = [f"chat format {chat_format}"] if chat_format else []
    extra += [f"{threads} thread(s)"] if threads else []
    memory = getattr(backend, "memory_note", "")
    extra += [memory] if memory else []
    return details + (f" ({', '.join(extra)})" if extra else "")


async def run_worker_async(settings: Settings) -> None:
    backend = make_backend(settings)
    await backend.start()  # raises BackendError: the CLI prints it and exits 1
    click.echo(f"loaded {describe_backend(backend)}", err=True)
    try:
        await _serve(settings, backend)
    finally:
        with anyio.CancelScope(shield=True):
            await backend.stop()


async def _serve(settings: Settings, backend: AnyBackend) -> None:
    worker_settings = WorkerSettings(
        name=settings.name, slots=settings.slots, heartbeat_s=settings.heartbeat_s
    )
    delay = 0.2
    while True:
        peer = BoardPeer(settings.url, settings.board, token=settings.token,
                         max_message_bytes=settings.max_message_bytes)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(peer.start)
                worker = Worker(peer, backend, worker_settings)
                await tg.start(worker.run)
                click.echo(
                    f"worker {worker.name} ({worker.id}) serving {settings.url}/{settings.board} "
                    f"with {settings.slots} slot(s)", err=True,
                )
                tg.start_soon(_drain_on_signal, worker, settings.drain_timeout_s, tg.cancel_scope)
                tg.start_soon(_fail_when_refused, peer)
            return
        except* ConnectError as group:
            log.warning("server not reachable (%s); retrying", group.exceptions[0])
            click.echo(f"waiting for the server at {settings.url} ...", err=True)
        await anyio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def _fail_when_refused(peer: BoardPeer) -> None:
    """Raise the peer's fatal error (the server closed on us for good) instead of idling."""
    while peer.error is None:
        await peer.changed.wait()
    error = peer.error
    if isinstance(error, ConnectionClosedError):
        raise error
    # Not a ConnectError: that one would be taken for "server down" and retried.
    raise ConnectionClosedError(f"the server refused this worker: {error}") from error


async def _drain_on_signal(worker: Worker, timeout_s: float, scope: anyio.CancelScope) -> None:
    """SIGTERM, Ctrl-C or a drain request on the board (`kanbanmesh worker --drain NAME`): take
    no new task, finish the ones held, then leave; a second signal (or the drain timeout)
    leaves at once, and the broker requeues what is left."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as first:

            async def on_signal() -> None:
                async for _ in signals:
                    break
                first.cancel_scope.cancel()

            async def on_request() -> None:
                await worker.drain_requested.wait()
                first.cancel_scope.cancel()

            first.start_soon(on_signal)
            first.start_soon(on_request)
        click.echo(f"worker {worker.name}: draining (signal again to stop now)", err=True)
        async with anyio.create_task_group() as tg:

            async def second_signal() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(second_signal)
            if not await worker.drain_and_wait(timeout_s):
                click.echo(f"worker {worker.name}: drain timed out; handing tasks back", err=True)
            tg.cancel_scope.cancel()
        if worker.drain_requested.is_set():
            await worker.clear_drain_request()
    scope.cancel()


async def request_drain_async(settings: Settings, target: str, timeout_s: float) -> None:
    """Ask the worker named or identified `target` to drain, and wait until it has left."""
    async with BoardPeer(settings.url, settings.board, token=settings.token) as peer:
        present = [
            s for s in peer.peers().values()
            if s.get(c.A_ROLE) == PeerRole.WORKER and target in (s.get(c.A_ID), s.get(c.A_NAME))
        ]
        if not present:
            raise ConfigurationError(f"no worker named or identified {target!r} on this board")
        peer.doc.get(c.CONTROL, type=Map)[c.DRAIN_PREFIX + target] = now_ms()
        click.echo(f"asked {target} to drain; waiting for it to finish and leave ...", err=True)
        with anyio.fail_after(timeout_s):
            while any(
                s.get(c.A_ROLE) == PeerRole.WORKER and target in (s.get(c.A_ID), s.get(c.A_NAME))
                for s in peer.peers().values()
            ):
                await peer.presence_changed.wait()
        click.echo(f"{target} drained and left", err=True)


def request_drain(settings: Settings, target: str) -> None:
    anyio.run(request_drain_async, settings, target, settings.drain_timeout_s + 30)


def run_worker(settings: Settings) -> None:
    anyio.run(run_worker_async, settings)
