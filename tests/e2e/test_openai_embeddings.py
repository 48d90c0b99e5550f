"""`POST /v1/embeddings` on a real server with a real sentence-transformers worker on the
bundled model, driven by the official `openai` package and LangChain's `OpenAIEmbeddings`,
unmodified; a stock JavaScript client's embed task; hostile bodies."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import openai
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_sdk import AsyncClient
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board.embeddings import MAX_EMBED_INPUT_CHARS, MAX_EMBED_INPUTS
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.embedding_models import DEFAULT_MODEL
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool
from tests.e2e.embed_workers import SharedModelBackend, reference
from tests.e2e.test_js import node
from tests.e2e.test_openai_api_property import RANDOM_IN_BACKGROUND, json_leaf, json_value

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TEXTS = ["The cat sat on the mat.", "Embeddings map text to vectors.", "¿Dónde está la biblioteca?"]
SECRET = "embeddings-test-secret-of-enough-length"


@pytest.fixture
async def mesh(tmp_path: Path, st_backend: SharedModelBackend) -> AsyncIterator[tuple[str, WorkerPool]]:
    """A server (2 s queue timeout) and a pool of embedding workers on the bundled model."""
    settings = Settings(port=0, data_dir=tmp_path, queue_timeout_s=2.0)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        yield url, WorkerPool(url, tg, backend=st_backend)
        tg.cancel_scope.cancel()


def base_url(url: str) -> str:
    return "http" + url[2:] + "/v1"


async def test_the_openai_client_gets_the_models_vectors(
    mesh: tuple[str, WorkerPool], reference_model: object
) -> None:
    url, pool = mesh
    await pool.start(slots=2)
    expected = reference(reference_model, TEXTS)
    async with openai.AsyncOpenAI(base_url=base_url(url), api_key="unused", max_retries=0) as client:
        floats = await client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS, encoding_format="float")
        # Without `encoding_format` the package asks for base64 and decodes it itself.
        default = await client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS)
        packed = await client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS, encoding_format="base64")
        single = await client.embeddings.create(model="", input="hello")
        tokens = await client.embeddings.create(model=DEFAULT_MODEL, input=[[7592, 2088], [1037]])
        one_array = await client.embeddings.create(model=DEFAULT_MODEL, input=[7592, 2088])
        models = await client.models.list()
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert np.allclose(np.array([d.embedding for d in floats.data]), expected, atol=1e-5)
    assert np.allclose(np.array([d.embedding for d in default.data]), expected, atol=1e-5)
    # Asked for explicitly, base64 comes back as the strings: little-endian float32.
    unpacked = [np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4") for d in packed.data]
    assert np.allclose(np.array(unpacked), expected, atol=1e-5)
    assert floats.model == DEFAULT_MODEL and single.model == DEFAULT_MODEL
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > len(TEXTS)
    assert np.allclose(single.data[0].embedding, reference(reference_model, ["hello"])[0], atol=1e-5)
    assert np.allclose(tokens.data[0].embedding, reference(reference_model, ["hello world"])[0], atol=1e-5)
    assert len(tokens.data) == 2 and len(one_array.data) == 1
    assert np.allclose(one_array.data[0].embedding, tokens.data[0].embedding, atol=1e-6)
    assert DEFAULT_MODEL in [m.id for m in models.data]


async def test_langchain_openai_embeddings(mesh: tuple[str, WorkerPool], reference_model: object) -> None:
    from langchain_openai import OpenAIEmbeddings

    url, pool = mesh
    await pool.start()
    # check_embedding_ctx_length=False: else LangChain cuts texts with tiktoken, which
    # downloads its encoding on first use (and counts OpenAI's tokens, not this model's).
    # Its own HTTP clients, closed here: LangChain leaves the ones it makes open.
    async with httpx.AsyncClient() as http_async:
        with httpx.Client() as http_sync:
            embeddings = OpenAIEmbeddings(
                model=DEFAULT_MODEL, base_url=base_url(url), api_key="unused",  # type: ignore[arg-type]
                check_embedding_ctx_length=False, max_retries=0,
                http_client=http_sync, http_async_client=http_async,
            )
            documents = await embeddings.aembed_documents(TEXTS)
            query = await embeddings.aembed_query("a question")
    assert np.allclose(np.array(documents), reference(reference_model, TEXTS), atol=1e-5)
    assert np.allclose(query, reference(reference_model, ["a question"])[0], atol=1e-5)


async def test_bad_requests_answer_in_openais_shape(mesh: tuple[str, WorkerPool]) -> None:
    url, pool = mesh
    await pool.start()
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"model": DEFAULT_MODEL, "input": []}, 400, "input"),
        ({"model": DEFAULT_MODEL, "input": [""]}, 400, "input[0]"),
        ({"model": DEFAULT_MODEL, "input": ["x"] * (MAX_EMBED_INPUTS + 1)}, 400, "input"),
        ({"model": DEFAULT_MODEL, "input": "x" * (MAX_EMBED_INPUT_CHARS + 1)}, 400, "input"),
        ({"model": DEFAULT_MODEL, "input": 42}, 400, "input"),
        ({"model": DEFAULT_MODEL, "input": [["a"]]}, 400, None),
        ({"model": DEFAULT_MODEL, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": DEFAULT_MODEL, "input": "x", "temperature": 1}, 400, "temperature"),
        ({"model": DEFAULT_MODEL}, 400, "input"),
        ({"model": "no-such-model", "input": "x"}, 404, "model"),
        ({"model": DEFAULT_MODEL, "input": "x", "dimensions": 128}, 400, "dimensions"),
        ({"model": DEFAULT_MODEL, "input": [[7592] * 600]}, 400, "input"),
    ]
    async with httpx.AsyncClient(base_url=base_url(url), timeout=30) as http:
        for body, status, param in cases:
            reply = await http.post("/embeddings", json=body)
            where = f"{json.dumps(body)[:80]}: {reply.status_code} {reply.text[:200]}"
            assert reply.status_code == status, where
            error = reply.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, where
            if param is not None:
                assert (error["param"] or "").startswith(param), where
        unknown = await http.post("/embeddings", json={"model": "no-such-model", "input": "x"})
        assert unknown.json()["error"]["code"] == "model_not_found"
        wrong_method = await http.get("/embeddings")
        assert wrong_method.status_code == 405
    async with AsyncClient(url) as watcher:
        with anyio.fail_after(10):
            while watcher.snapshot().counts()["todo"] or watcher.snapshot().counts()["doing"]:
                await watcher.wait_changed(0.5)


async def test_without_an_embedding_worker_a_request_answers_503(mesh: tuple[str, WorkerPool]) -> None:
    url, pool = mesh
    pool.backend = None
    await pool.start()  # an echo (chat) worker: it takes no embed task
    async with openai.AsyncOpenAI(base_url=base_url(url), api_key="unused", max_retries=0) as client:
        with anyio.fail_after(20), pytest.raises(openai.InternalServerError) as waited:
            await client.embeddings.create(model="", input="x")
    assert waited.value.status_code == 503 and waited.value.code == "no_worker"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_a_stock_js_client_embeds(
    mesh: tuple[str, WorkerPool], reference_model: object, js_dir: Path
) -> None:
    url, pool = mesh
    await pool.start()
    code, events = await node(js_dir, "embed.mjs", "--url", url, "--text", TEXTS[0], "--text", TEXTS[1],
                              timeout_s=60)
    assert code == 0, events
    done = events[-1]
    assert done["event"] == "done" and done["status"] == "succeeded" and done["dimensions"] == 384
    assert np.allclose(np.array(done["vectors"]), reference(reference_model, TEXTS[:2]), atol=1e-5)


def api_key(role: TokenRole, subject: str, boards: tuple[str, ...] = ("default",)) -> str:
    return create_token(SECRET, Identity(subject=subject, role=role, boards=list(boards)), 600)


async def test_tenants_embed_on_their_own_boards(tmp_path: Path, st_backend: SharedModelBackend) -> None:
    """Keys select boards as for chat completions: a key's requests become tasks of its
    subject on its board, another board's key is refused, a request without one too."""
    settings = Settings(port=0, data_dir=tmp_path, auth_secret=SECRET, queue_timeout_s=2.0)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        pool = WorkerPool(url, tg, token=api_key(TokenRole.WORKER, "host", ("team-a",)), board="team-a",
                          backend=st_backend)
        await pool.start()
        key_a = api_key(TokenRole.CLIENT, "alice", ("team-a",))
        key_b = api_key(TokenRole.CLIENT, "bob", ("team-b",))
        async with (
            openai.AsyncOpenAI(base_url=base_url(url), api_key=key_a, max_retries=0) as alice,
            openai.AsyncOpenAI(base_url=base_url(url), api_key=key_b, max_retries=0) as bob,
            openai.AsyncOpenAI(base_url=base_url(url), api_key="not-a-token", max_retries=0) as anonymous,
        ):
            answer = await alice.embeddings.create(model="", input="hello")
            with pytest.raises(openai.PermissionDeniedError):
                await bob.embeddings.create(model="", input="x", extra_headers={"X-Kanbanmesh-Board": "team-a"})
            with pytest.raises(openai.AuthenticationError):
                await anonymous.embeddings.create(model="", input="x")
        async with AsyncClient(url, board="team-a", token=api_key(TokenRole.ADMIN, "ops", ("*",))) as admin:
            with anyio.fail_after(10):
                while not admin.snapshot().done:
                    await admin.wait_changed(0.5)
            owners = {entry.owner for entry in admin.snapshot().done}
        tg.cancel_scope.cancel()
    assert len(answer.data[0].embedding) == 384 and owners == {"alice"}


# -- any body -------------------------------------------------------------------------------

KEYS = ("input", "model", "encoding_format", "dimensions", "user")
plausible = st.sampled_from([
    "", "x", DEFAULT_MODEL, "float", "base64", 0, 1, 384, -1, 2**64, 1.5, True, [], [""], ["a", "b"],
    [1, 2], [[1, 2]], [[]], [-1], [[2**40]], {}, None,
])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["mutated", "random", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "random":
        return json.dumps(draw(json_value)).encode()
    body: dict[str, Any] = {"input": "x", "model": DEFAULT_MODEL}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=3)):
        body[key] = draw(plausible | json_value)
    for key in draw(st.lists(st.text(min_size=1, max_size=8), max_size=1)):
        body[key] = draw(json_leaf)
    return json.dumps(body).encode()


@asynccontextmanager
async def running_mesh(data_dir: Path, backend: SharedModelBackend) -> AsyncIterator[str]:
    settings = Settings(port=0, data_dir=data_dir, queue_timeout_s=5.0)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        await WorkerPool(url, tg, backend=backend).start(slots=2)
        yield url
        tg.cancel_scope.cancel()


@pytest.fixture
def mesh_http(tmp_path: Path, st_backend: SharedModelBackend) -> Iterator[tuple[str, httpx.Client]]:
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(running_mesh(tmp_path, st_backend)) as url,
        httpx.Client(base_url=base_url(url), timeout=30, limits=httpx.Limits(max_connections=1)) as client,
    ):
        yield url, client


@pytest.mark.filterwarnings(f"ignore:{RANDOM_IN_BACKGROUND}")
def test_any_body_answers_in_openais_shape_and_leaves_nothing_behind(mesh_http: tuple[str, httpx.Client]) -> None:
    url, http = mesh_http

    @settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies())
    def any_body(body: bytes) -> None:
        reply = http.post("/embeddings", content=body, headers={"content-type": "application/json"})
        where = f"{reply.status_code} for {body[:200]!r}: {reply.text[:300]}"
        assert reply.status_code < 500, where
        answer = reply.json()
        if reply.status_code == 200:
            assert answer["object"] == "list" and answer["data"], where
        else:
            assert 400 <= reply.status_code < 500, where
            assert set(answer["error"]) == {"message", "type", "param", "code"}, where

    any_body()

    async def board_counts() -> dict[str, int]:
        async with AsyncClient(url) as watcher:
            return watcher.snapshot().counts()

    counts = anyio.run(board_counts)
    assert counts["todo"] == counts["prepared"] == counts["doing"] == 0, counts
