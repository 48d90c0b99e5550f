"""Embed tasks against a worker whose backend answers nonsense (vectors that are not finite,
too few or too many, of another length than asked for): the board refuses such a write or the
readers refuse such an entry; neither `/v1/embeddings` nor the SDK's `embed()` hands garbage
on, and the endpoint always answers in OpenAI's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

from client_sdk import AsyncClient, UpdateRefusedError
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board import constants as c
from kanbanmesh.board.embeddings import encode_vectors
from kanbanmesh.board.roles import PeerRole, TokenRole
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import InvalidTaskError, TaskFailedError
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool
from worker.backends.embedding_base import EmbeddingRequest, Embeddings, Vectors

pytestmark = pytest.mark.anyio

Answer = Callable[[EmbeddingRequest], Vectors]


@dataclass
class NonsenseBackend:
    """An embedding backend that answers what `answer` makes of each request."""

    answer: Answer

    @property
    def engine(self) -> str:
        return "nonsense"

    @property
    def models(self) -> list[str]:
        return ["nonsense"]

    def dimensions(self, model: str) -> int:
        return 4

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        return Embeddings(self.answer(request), prompt_tokens=len(request.inputs))


def rows(count: int, width: int, value: float = 0.5) -> Vectors:
    return np.full((count, width), value, dtype=np.float32)


NONSENSE: dict[str, Answer] = {
    "nan": lambda r: rows(len(r.inputs), 4, float("nan")),
    "inf": lambda r: rows(len(r.inputs), 4, float("inf")),
    "too few": lambda r: rows(len(r.inputs) - 1, 4),
    "too many": lambda r: rows(len(r.inputs) + 1, 4),
    "other length": lambda r: rows(len(r.inputs), (r.dimensions or 4) + 1),
}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, anyio.abc.TaskGroup]]:
    settings = Settings(port=0, data_dir=tmp_path, queue_timeout_s=5.0)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        yield url, tg
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("kind", sorted(NONSENSE))
async def test_vectors_that_are_nonsense_reach_no_caller(
    served: tuple[str, anyio.abc.TaskGroup], kind: str
) -> None:
    url, tg = served
    await WorkerPool(url, tg, backend=NonsenseBackend(NONSENSE[kind])).start()
    dimensions = 4 if kind == "other length" else None
    async with AsyncClient(url) as client:
        await client.wait_for_workers(1, kind="embed")
        with anyio.fail_after(30), pytest.raises((InvalidTaskError, TaskFailedError)):
            await client.embed(["a", "b"], dimensions=dimensions)
    body: dict[str, object] = {"input": ["a", "b"], "model": "nonsense"}
    if dimensions is not None:
        body["dimensions"] = dimensions
    async with httpx.AsyncClient(base_url="http" + url[2:] + "/v1", timeout=30) as http:
        reply = await http.post("/embeddings", json=body)
    assert reply.status_code >= 400, reply.text[:300]
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}


SECRET = "p" * 40


def token(role: TokenRole, subject: str) -> str:
    return create_token(SECRET, Identity(subject=subject, role=role, boards=["default"]), 600)


@pytest.mark.parametrize(
    "dimensions, vectors, written, code",
    [
        (None, 1, 4, c.CLOSE_INVALID_TASK),  # one vector for two inputs
        (None, 3, 4, c.CLOSE_INVALID_TASK),
        (4, 2, 5, c.CLOSE_INVALID_TASK),  # strings of 4 values, `dimensions` saying 5
        (4, 2, 4, None),  # as asked: taken
        (8, 2, 4, c.CLOSE_FORBIDDEN),  # well formed, but not the length asked for
    ],
)
async def test_a_hostile_worker_writes_no_malformed_vectors(
    tmp_path: Path, dimensions: int | None, vectors: int, written: int, code: int | None
) -> None:
    """A worker peer (its own code, not kanbanmesh's worker) finishing an embed task assigned
    to it with vectors that do not fit the task: the server refuses the write."""
    settings = Settings(port=0, data_dir=tmp_path, auth_secret=SECRET)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        hostile = BoardPeer(url, token=token(TokenRole.WORKER, "host"), reconnect=False)
        await tg.start(hostile.start)
        hostile.set_presence({c.A_ROLE: "worker", c.A_ID: "host/hostile", c.A_SLOTS: 1, c.A_STATE: "ready",
                              c.A_MODELS: ["m"], c.A_KINDS: ["embed"]})
        async with AsyncClient(url, token=token(TokenRole.CLIENT, "alice")) as alice:
            await alice.wait_for_workers(1, kind="embed")
            handle = await alice.submit_embed(["a", "b"], dimensions=dimensions)
            board = hostile.board
            with anyio.fail_after(20):
                while board.locate(handle.id) is not Column.PREPARED:
                    await hostile.changed.wait()
                board.move(handle.id, Column.PREPARED, Column.DONE, PeerRole.WORKER, set_fields={
                    c.F_STATUS: "succeeded", c.F_RESULT: "", c.F_FINISHED_AT: 1.0, c.F_DIMENSIONS: written,
                    c.F_EMBEDDINGS: encode_vectors(rows(vectors, 4)),
                })
                if code is None:
                    assert (await handle.embeddings(20)).vectors.shape == (2, 4)
                else:
                    while hostile.error is None:
                        await hostile.changed.wait()
                    assert isinstance(hostile.error, UpdateRefusedError)
                    assert hostile.error.code == code, hostile.error
                    assert alice.peer.board.locate(handle.id) is Column.PREPARED
        tg.cancel_scope.cancel()


async def test_concurrent_requests_without_an_embedding_worker_are_bounded_per_owner(tmp_path: Path) -> None:
    """Requests wait for an embedding worker holding a task each: the API key's open-task quota
    bounds them (429 beyond it, in OpenAI's shape), and every one leaves nothing behind."""
    settings = Settings(port=0, data_dir=tmp_path, queue_timeout_s=2.0, max_open_tasks=10,
                        auth_secret=SECRET)  # type: ignore[arg-type]
    key = {"Authorization": f"Bearer {token(TokenRole.CLIENT, 'alice')}"}
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        statuses: list[tuple[int, str]] = []
        async with httpx.AsyncClient(base_url="http" + url[2:] + "/v1", timeout=30, headers=key) as http:

            async def one() -> None:
                reply = await http.post("/embeddings", json={"input": ["a"] * 64})
                statuses.append((reply.status_code, reply.json()["error"]["code"]))

            with anyio.fail_after(60):
                async with anyio.create_task_group() as requests:
                    for _ in range(40):
                        requests.start_soon(one)
        assert sorted(set(statuses)) == [(429, "rate_limit_exceeded"), (503, "no_worker")], statuses
        assert statuses.count((503, "no_worker")) <= 10
        async with AsyncClient(url, token=token(TokenRole.CLIENT, "alice")) as watcher:
            with anyio.fail_after(10):
                while watcher.snapshot().counts()["todo"]:
                    await watcher.wait_changed(0.5)
        tg.cancel_scope.cancel()
