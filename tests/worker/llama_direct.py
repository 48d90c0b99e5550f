"""A started llama backend, and the baseline it is compared with: llama-cpp-python called
directly, the way its users call it, with the same model, context size and threads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import pytest
from llama_cpp import Llama

from tests.worker.model_files import bundled_model
from worker.backends.llama import LlamaBackend, LlamaConfig
from worker.backends.llama_loader import LoadOptions, extra_buffers_safe, load_llama


@contextmanager
def started_backend(*, n_ctx: int, threads: int, slots: int, **config: Any) -> Iterator[LlamaBackend]:
    """The bundled model loaded once (for a module-scoped fixture; no event loop is kept)."""
    backend = LlamaBackend(LlamaConfig(n_ctx=n_ctx, threads=threads, slots=slots, **config))
    anyio.run(backend.start)
    try:
        yield backend
    finally:
        anyio.run(backend.stop)


@asynccontextmanager
async def loaded_backend(*, n_ctx: int, threads: int, slots: int, **config: Any) -> AsyncIterator[LlamaBackend]:
    """The bundled model loaded for one test (inside its event loop)."""
    backend = LlamaBackend(LlamaConfig(n_ctx=n_ctx, threads=threads, slots=slots, **config))
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


@contextmanager
def direct_llama(*, n_ctx: int, threads: int, flash_attn: bool = False) -> Iterator[Llama]:
    """A plain `Llama` on the bundled model (through the AMX guard: no test may segfault), with
    flash attention as the worker's engine is asked to run (`--flash-attn`; off by default)."""
    options = LoadOptions(
        n_ctx=n_ctx, threads=threads, extra_buffers=extra_buffers_safe(), flash_attn=flash_attn
    )
    llama = load_llama(bundled_model(), options)
    try:
        yield llama
    finally:
        llama.close()


def direct_chat(llama: Llama, messages: list[dict[str, str]], **params: Any) -> str:
    """`create_chat_completion` from a clean KV cache, as a fresh `Llama` would answer (a
    `cache_prompt` meant for the mesh is not llama-cpp-python's: it is dropped)."""
    params.pop("cache_prompt", None)
    llama.reset()  # type: ignore[no-untyped-call]
    reply: Any = llama.create_chat_completion(messages=messages, **params)  # type: ignore[arg-type]
    return str(reply["choices"][0]["message"]["content"])


def llama_fixtures(*, n_ctx: int, threads: int) -> tuple[Any, Any]:
    """Module-scoped fixtures `backend` (two slots) and `direct` (the baseline), for
    `backend, direct = llama_fixtures(...)` in a test module."""

    @pytest.fixture(scope="module")
    def backend() -> Iterator[LlamaBackend]:
        with started_backend(n_ctx=n_ctx, threads=threads, slots=2) as loaded:
            yield loaded

    @pytest.fixture(scope="module")
    def direct() -> Iterator[Llama]:
        with direct_llama(n_ctx=n_ctx, threads=threads) as llama:
            yield llama

    return backend, direct
