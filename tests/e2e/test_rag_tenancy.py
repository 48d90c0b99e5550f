"""Retrieval is per board, through a real server: a client of board B neither lists nor
retrieves board A's collection, with auth on and in open mode alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from client_sdk import AsyncClient, TaskEntry, TaskStatus
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from rag.collection import Collection
from rag.embedding import ModelCache
from worker.backends.echo import EchoBackend
from worker.service import Worker, WorkerSettings

pytestmark = pytest.mark.anyio

SECRET = "t" * 40
VAULT = "The vault code is 7141 and only the treasurers know it."
QUESTION = "What is the vault code?"


def token(subject: str, board: str, role: TokenRole = TokenRole.CLIENT) -> str:
    return create_token(SECRET, Identity(subject=subject, role=role, boards=[board]), 600)


def ingest(data_dir: Path, board: str, name: str, text: str, models: ModelCache) -> None:
    """Board `board`'s collection `name` in `data_dir`, as `rag ingest --board` makes it."""
    source = data_dir.parent / "sources" / board / f"{name}.md"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(f"# {name}\n\n{text}\n")
    collection = Collection.create(data_dir / "rag" / board, name, models)
    try:
        collection.ingest([source])
    finally:
        collection.close()


@asynccontextmanager
async def mesh(tmp_path: Path, models: ModelCache, *, auth: bool) -> AsyncIterator[str]:
    """A server whose board `alpha` owns `vault` and board `beta` owns `menu`, with an echo
    worker on `alpha`."""
    data = tmp_path / "data"
    ingest(data, "alpha", "vault", VAULT, models)
    ingest(data, "beta", "menu", "Lunch is served at noon in the canteen.", models)
    secret = SECRET if auth else None
    settings = Settings(port=0, data_dir=data, orphan_grace_s=0.5, auth_secret=secret)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        url: str = await tg.start(
            lambda task_status: serve(settings, rag_models=models, task_status=task_status)
        )
        peer = BoardPeer(
            url, "alpha", token=token("alpha-host", "alpha", TokenRole.WORKER) if auth else None
        )
        await tg.start(peer.start)
        await tg.start(Worker(peer, EchoBackend(), WorkerSettings(name="alpha")).run)
        yield url
        tg.cancel_scope.cancel()


async def ask(url: str, board: str, collection: str, *, auth: bool) -> TaskEntry:
    async with AsyncClient(url, board, token=token("ann", board) if auth else None) as client:
        handle = await client.submit(QUESTION, rag={"collection": collection, "k": 3})
        return await handle.wait(timeout_s=30)


async def listed(url: str, board: str, *, auth: bool) -> list[str]:
    params = {"token": token("ann", board)} if auth else {}
    async with httpx.AsyncClient(base_url="http" + url[2:], timeout=10) as http:
        reply = await http.get(f"/boards/{board}/rag/collections", params=params)
    assert reply.status_code == 200, reply.text
    return [c["name"] for c in reply.json()["collections"]]


@pytest.mark.parametrize("auth", [True, False], ids=["auth", "open"])
async def test_a_board_cannot_list_or_retrieve_another_boards_collection(
    tmp_path: Path, rag_models: ModelCache, auth: bool
) -> None:
    async with mesh(tmp_path, rag_models, auth=auth) as url:
        with anyio.fail_after(60):
            assert await listed(url, "beta", auth=auth) == ["menu"]
            assert await listed(url, "alpha", auth=auth) == ["vault"]
            assert await listed(url, "gamma", auth=auth) == []
            async with httpx.AsyncClient(base_url="http" + url[2:], timeout=10) as http:
                # "beta\n": a name the URL router lets through, but no board's.
                params = {"token": token("ann", "beta")} if auth else {}
                sneaky = await http.get("/boards/beta%0A/rag/collections", params=params)
            assert sneaky.status_code == 404 and "menu" not in sneaky.text

            # The collection works where it belongs; elsewhere it is nowhere.
            own = await ask(url, "alpha", "vault", auth=auth)
            stolen = await ask(url, "beta", "vault", auth=auth)
            unknown = await ask(url, "beta", "nowhere", auth=auth)

    assert own.status is TaskStatus.SUCCEEDED and own.context and "7141" in own.context[0].text
    assert stolen.status is unknown.status is TaskStatus.FAILED
    assert stolen.error is not None and unknown.error is not None
    assert stolen.error.code == unknown.error.code == "collection_not_found"
    assert stolen.error.message == unknown.error.message.replace("nowhere", "vault")
    assert stolen.context is None and stolen.result == ""
    assert "7141" not in stolen.model_dump_json()
