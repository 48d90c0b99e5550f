"""`kanbanmesh worker` as a process: which backend, and how it ends when it cannot serve."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from pycrdt import Doc
from websockets.asyncio.server import ServerConnection, serve

from kanbanmesh.board import constants as c
from kanbanmesh.commands.worker import make_backend, make_embedding_backend
from kanbanmesh.errors import BackendError, ConfigurationError
from kanbanmesh.protocol import codec
from kanbanmesh.settings import Settings
from tests.conftest import cli

pytestmark = pytest.mark.anyio


def test_make_backend_builds_the_named_backend() -> None:
    assert make_backend(Settings(backend="echo")).engine == "echo"
    openai = make_backend(Settings(backend="openai", base_url="http://x/v1", model="m", api_key_env="K"), {"K": "v"})
    assert openai.engine == "openai" and openai.models == ["m"]
    with pytest.raises(ConfigurationError, match="--base-url"):
        make_backend(Settings(backend="openai", model="m"))
    with pytest.raises(ConfigurationError, match="K, which is not set"):
        make_backend(Settings(backend="openai", base_url="http://x/v1", model="m", api_key_env="K"), {})


def test_make_embedding_backend_builds_llama_and_openai_ones() -> None:
    llama = make_embedding_backend(Settings(backend="llama", embedding=True, model="/models/e5.gguf"))
    assert llama.engine == "llama.cpp" and llama.models == ["e5"]
    openai = make_embedding_backend(
        Settings(backend="openai", embedding=True, base_url="http://x/v1", model="m", api_key_env="K"), {"K": "v"})
    assert openai.engine == "openai" and openai.models == ["m"]
    with pytest.raises(BackendError, match="needs --model PATH"):
        make_embedding_backend(Settings(backend="llama", embedding=True))
    with pytest.raises(ConfigurationError, match="--base-url"):
        make_embedding_backend(Settings(backend="openai", embedding=True, model="m"))
    with pytest.raises(ConfigurationError, match="not echo"):
        make_embedding_backend(Settings(backend="echo", embedding=True))


@pytest.fixture
async def refusing_server() -> AsyncIterator[str]:
    """A y-websocket server that syncs a worker, then refuses its announcement (1008: fatal,
    as a worker id outside its token's subject is; a refused *write* is not, see
    tests/e2e/test_worker_refusals.py)."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(codec.sync_step1(Doc().get_state()))
        await ws.send(codec.sync_step2(Doc().get_update()))
        async for data in ws:
            if isinstance(data, bytes) and isinstance(codec.parse_message(data), codec.AwarenessMessage):
                await ws.close(c.CLOSE_POLICY_VIOLATION, "forbidden: refused by the test")
                return

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def test_a_worker_refused_by_the_server_exits_with_the_reason(refusing_server: str) -> None:
    with anyio.fail_after(30):
        done = await anyio.run_process(cli("worker", "--url", refusing_server, "--backend", "echo"), check=False)
    assert done.returncode == 1
    assert b"forbidden: refused by the test" in done.stderr
