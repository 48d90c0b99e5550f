"""The OpenAI-compatible embedding backend over real HTTP.

Against a real kanbanmesh server's `/v1/embeddings` (its embedding worker on the bundled
model), also as the backend of an embedding worker on a second server; and against a small
fake server for the cases a real one cannot be made to produce on demand (oversized answers,
wrong vector counts, upstream errors of each kind).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from client_sdk import AsyncClient
from kanbanmesh.embedding_models import DEFAULT_MODEL
from kanbanmesh.errors import BackendError
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool
from tests.e2e.backend_workers import running_worker
from tests.e2e.embed_workers import SharedModelBackend, reference
from tests.support.asgi import serving
from worker.backends.embedding_base import EmbeddingRequest
from worker.backends.openai_embed import OpenAIEmbedBackend, _decode
from worker.backends.openai_http import OpenAIConfig

pytestmark = pytest.mark.anyio

MODEL = "fake-embed"
KEY = "sk-embed-1"
DIM = 8


def fake_vector(text: str, dim: int = DIM) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A deterministic vector per text: its SHA-256's first `dim` bytes, scaled to [0, 1]."""
    digest = hashlib.sha256(text.encode()).digest()
    return np.frombuffer(digest[:dim], dtype=np.uint8).astype(np.float32) / 255


@dataclass
class FakeEmbeddings:
    """Answers `/v1/embeddings`; an input text picks a misbehaviour: TOOLONG, HUGE, SHORT,
    NAN, FLOATS, BADB64, RAGGED, FAIL500, RATE."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/models", self.models),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
        ])

    async def models(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "Incorrect API key provided"}}, 401)
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def embeddings(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        if body["model"] != MODEL:
            return JSONResponse({"error": {"message": f"The model {body['model']} does not exist"}}, 404)
        inputs = body["input"]
        first = inputs[0] if inputs and isinstance(inputs[0], str) else ""
        dim = body.get("dimensions") or DIM
        if "dimensions" in body and body["dimensions"] > DIM:
            return JSONResponse({"error": {"message": "This model does not support specifying dimensions"}}, 400)
        errors = {
            "TOOLONG": (400, "This model's maximum context length is 8192 tokens"),
            "FAIL500": (500, "upstream exploded"),
            "RATE": (429, "Rate limit reached"),
        }
        if first in errors:
            status, message = errors[first]
            return JSONResponse({"error": {"message": message}}, status)
        if first == "HUGE":
            return Response(b"[" + b"0," * 400_000 + b"0]", media_type="application/json")
        data = []
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else json.dumps(item)
            vector = fake_vector(text, dim)
            if first == "NAN":
                vector[0] = np.nan
            if first == "RAGGED" and i == 1:
                vector = vector[:-1]
            encoded: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode()
            if first == "FLOATS":
                encoded = vector.tolist()
            if first == "BADB64":
                encoded = "not base64!"
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        if first == "SHORT":
            data = data[:-1]
        data.reverse()  # the index, not the order, says which input a vector is of
        tokens = sum(len(str(x).split()) for x in inputs)
        return JSONResponse({"object": "list", "model": MODEL, "data": data,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeEmbeddings, str]]:
    server = FakeEmbeddings()
    async with serving(server.app()) as root:
        yield server, root + "/v1"


def backend_for(base_url: str, *, model: str = MODEL, key: str | None = KEY,
                max_response_bytes: int = 1 << 20) -> OpenAIEmbedBackend:
    return OpenAIEmbedBackend(OpenAIConfig(base_url=base_url, model=model, api_key=key),
                              max_response_bytes=max_response_bytes)


async def test_vectors_come_back_in_input_order_from_base64(fake: tuple[FakeEmbeddings, str]) -> None:
    server, url = fake
    backend = backend_for(url)
    await backend.start()
    try:
        assert backend.dimensions("") == DIM and backend.models == [MODEL]
        result = await backend.embed(EmbeddingRequest(["one two", "three", [1, 2, 3]], model=MODEL))
        floats = await backend.embed(EmbeddingRequest(["FLOATS", "x"]))  # a server that ignores base64
        shorter = await backend.embed(EmbeddingRequest(["a"], dimensions=4))
    finally:
        await backend.stop()
    expected = np.stack([fake_vector("one two"), fake_vector("three"), fake_vector("[1, 2, 3]")])
    assert result.vectors.dtype == np.float32 and np.array_equal(result.vectors, expected)
    assert result.prompt_tokens == 6  # the fake counts words: 2 + 1 + 3
    assert np.array_equal(floats.vectors[1], fake_vector("x"))
    assert shorter.vectors.shape == (1, 4)
    probe, first, *_ = server.requests
    assert probe["encoding_format"] == first["encoding_format"] == "base64" and "dimensions" not in first
    assert first["input"] == ["one two", "three", [1, 2, 3]] and server.requests[-1]["dimensions"] == 4


async def test_upstream_failures_become_task_error_codes(fake: tuple[FakeEmbeddings, str]) -> None:
    _, url = fake
    backend = backend_for(url, max_response_bytes=100_000)
    await backend.start()
    cases = {
        "TOOLONG": "input_too_long", "FAIL500": "backend_error", "RATE": "rate_limited",
        "HUGE": "backend_error", "SHORT": "backend_error", "NAN": "backend_error",
        "BADB64": "backend_error", "RAGGED": "backend_error",
    }
    try:
        for text, code in cases.items():
            with pytest.raises(BackendError) as caught:
                await backend.embed(EmbeddingRequest([text, "second"]))
            assert caught.value.code == code, text
        with pytest.raises(BackendError) as caught:
            await backend.embed(EmbeddingRequest(["a"], dimensions=64))
        assert caught.value.code == "dimensions_unsupported"
        with pytest.raises(BackendError) as caught:
            await backend.embed(EmbeddingRequest(["a"], model="other"))
        assert caught.value.code == "unknown_model"
        assert (await backend.embed(EmbeddingRequest(["still serving"]))).vectors.shape == (1, DIM)
    finally:
        await backend.stop()


async def test_start_fails_clearly_on_a_bad_key_model_or_address(fake: tuple[FakeEmbeddings, str]) -> None:
    _, url = fake
    for backend, code in (
        (backend_for(url, key="wrong"), "backend_auth"),
        (backend_for(url, model="no-such-model"), "unknown_model"),
        (backend_for("http://127.0.0.1:9/v1"), "backend_unreachable"),
    ):
        with pytest.raises(BackendError) as caught:
            await backend.start()
        assert caught.value.code == code
    with pytest.raises(BackendError) as caught:
        backend_for("ftp://example/v1")
    assert caught.value.code == "bad_config"


@given(st.binary(max_size=64))
def test_base64_vectors_decode_or_fail_cleanly(raw: bytes) -> None:
    encoded = base64.b64encode(raw).decode()
    if len(raw) % 4:
        with pytest.raises(BackendError):
            _decode(encoded, "test")
    else:
        assert _decode(encoded, "test").tobytes() == np.frombuffer(raw, dtype="<f4").tobytes()


TEXTS = ["The cat sat on the mat.", "Embeddings map text to vectors.", "¿Dónde está la biblioteca?"]


@pytest.mark.slow
async def test_against_a_real_kanbanmesh_server_and_as_a_second_servers_worker(
    server_url: str, st_backend: SharedModelBackend, reference_model: object, tmp_path: Path
) -> None:
    async with anyio.create_task_group() as tg:
        pool = WorkerPool(server_url, tg, backend=st_backend)
        await pool.start(slots=2)
        upstream = "http" + server_url[2:] + "/v1"
        backend = OpenAIEmbedBackend(OpenAIConfig(base_url=upstream, model=DEFAULT_MODEL))
        await backend.start()
        try:
            assert backend.dimensions("") == 384
            direct = await backend.embed(EmbeddingRequest(TEXTS))
            assert np.abs(direct.vectors - reference(reference_model, TEXTS)).max() < 1e-5
            assert direct.prompt_tokens > len(TEXTS)
            for request, code in (
                (EmbeddingRequest(["x"], dimensions=64), "dimensions_unsupported"),
                (EmbeddingRequest([[7] * 400]), "input_too_long"),
            ):
                with pytest.raises(BackendError) as caught:
                    await backend.embed(request)
                assert caught.value.code == code
            # An embedding worker of a second server, whose backend is the first server.
            second = await tg.start(serve, Settings(port=0, data_dir=tmp_path / "second"))
            async with running_worker(second, backend), AsyncClient(second) as client:  # type: ignore[arg-type]
                [worker] = await client.wait_for_workers(1, timeout_s=30, kind="embed")
                assert worker.engine == "openai" and worker.models == [DEFAULT_MODEL]
                result = await client.embed(TEXTS, model=DEFAULT_MODEL, timeout_s=60)
            assert np.abs(result.vectors - direct.vectors).max() < 1e-6
        finally:
            await backend.stop()
        unknown = OpenAIEmbedBackend(OpenAIConfig(base_url=upstream, model="no-such-model"))
        with pytest.raises(BackendError) as caught:
            await unknown.start()
        assert caught.value.code == "unknown_model"
        tg.cancel_scope.cancel()
