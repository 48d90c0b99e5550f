"""`kanbanmesh worker --backend llama --embedding` in a process of its own: it announces an
embedding worker of its GGUF, and embed tasks from the SDK come back with llama.cpp's vectors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import numpy as np
import pytest

from client_sdk import AsyncClient
from tests.conftest import cli
from tests.worker.model_files import bundled_model
from worker.backends.embedding_base import EmbeddingRequest
from worker.backends.llama_embed import LlamaEmbedBackend, LlamaEmbedConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TEXTS = ["a kanban board", "an embedding worker", "the mean of hidden states"]


async def test_a_llama_embedding_worker_serves_embed_tasks(server_url: str) -> None:
    gguf: Path = bundled_model()
    process = await anyio.open_process(
        cli("worker", "--url", server_url, "--backend", "llama", "--embedding", "--model", str(gguf),
            "--threads", "1", "--n-ctx", "256"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with AsyncClient(server_url) as client:
            [worker] = await client.wait_for_workers(1, timeout_s=120, kind="embed")
            assert worker.engine == "llama.cpp" and worker.models == [gguf.stem]
            assert worker.kinds == ["embed"]
            result = await client.embed(TEXTS, model=gguf.stem, timeout_s=120)
    finally:
        process.terminate()
        with anyio.fail_after(30):
            await process.wait()
    direct = LlamaEmbedBackend(LlamaEmbedConfig(model=str(gguf), n_ctx=256, threads=1))
    await direct.start()
    try:
        expected = await direct.embed(EmbeddingRequest(TEXTS))
    finally:
        await direct.stop()
    assert result.vectors.shape == (3, 576) and result.model == gguf.stem
    assert np.abs(result.vectors - expected.vectors).max() < 1e-5
    assert result.usage.prompt_tokens == expected.prompt_tokens
