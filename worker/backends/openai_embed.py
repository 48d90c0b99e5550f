"""The OpenAI-compatible embedding backend: any server's `/embeddings` endpoint.

OpenAI, llama.cpp's `llama-server --embeddings`, vLLM, Ollama, another kanbanmesh server and
others speak it. A request's inputs go upstream in one call, with `encoding_format: "base64"`
(4 bytes a dimension instead of a decimal number's ~20) and `dimensions` when the task asked
for them. The answer is read up to a bound (`max_response_bytes`) and checked: one vector per
input, all of one length, finite. Upstream errors become the task's error codes
(`input_too_long`, `unknown_model`, `dimensions_unsupported`, `backend_auth`, ...).

The connection, its key and its error translation are the chat backend's (`openai_http`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from kanbanmesh.errors import BackendError
from worker.backends.embedding_base import EmbeddingInput, EmbeddingRequest, Embeddings, Vectors
from worker.backends.openai_http import (
    OpenAIConfig,
    OpenAIServer,
    _http_error,
    _transport_error,
    open_client,
)

MAX_RESPONSE_BYTES = 64 << 20
# What start() embeds to learn the model's dimensions (and that the endpoint works at all).
_PROBE = "dimensions probe"
# The chat backend's codes, as an embed task names the same failures.
_EMBED_CODES = {"context_overflow": "input_too_long", "model_not_found": "unknown_model"}


class _Datum(BaseModel):
    model_config = ConfigDict(extra="ignore")
    index: int
    embedding: str | list[float]


class _Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt_tokens: int = 0


class _Reply(BaseModel):
    """An `/embeddings` answer (only the fields used)."""

    model_config = ConfigDict(extra="ignore")
    data: list[_Datum]
    usage: _Usage | None = None


class OpenAIEmbedBackend(OpenAIServer):
    """Serves one embedding model name of one OpenAI-compatible server."""

    def __init__(self, config: OpenAIConfig, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        super().__init__(config, "openai embedding backend")
        self._max_bytes = max_response_bytes
        self._dim = 0

    def dimensions(self, model: str) -> int:
        self._check_model(model)
        return self._dim

    async def start(self) -> None:
        """Connect, and embed one probe text: the model's dimensions, and a check that the
        server has the endpoint and the model before the worker takes any task."""
        if self._client is not None:
            return
        client = await open_client(self._config)
        try:
            vectors, _ = await self._post(client, [_PROBE], None)
        except BaseException:
            await client.aclose()
            raise
        self._dim = vectors.shape[1]
        self._client = client

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        self._check_model(request.model)
        if self._client is None:
            raise BackendError("not_ready", "the backend is not started")
        vectors, tokens = await self._post(self._client, request.inputs, request.dimensions)
        return Embeddings(vectors, tokens)

    def _check_model(self, model: str) -> None:
        if model and model != self._config.model:
            raise BackendError("unknown_model", f"this worker serves {self._config.model!r}, not {model!r}")

    async def _post(
        self, client: httpx.AsyncClient, inputs: Sequence[EmbeddingInput], dimensions: int | None
    ) -> tuple[Vectors, int]:
        body: dict[str, Any] = {
            "model": self._config.model,
            "input": [item if isinstance(item, str) else list(item) for item in inputs],
            "encoding_format": "base64",
        }
        if dimensions is not None:
            body["dimensions"] = dimensions
        try:
            async with client.stream("POST", "/embeddings", json=body) as response:
                content = await self._read(response)
                status = response.status_code
        except httpx.HTTPError as exc:
            raise _transport_error(self._base, exc) from exc
        if status >= 400:
            raise self._error(status, content, dimensions)
        reply = self._parse(content)
        vectors = self._vectors(reply, len(inputs), dimensions)
        return vectors, reply.usage.prompt_tokens if reply.usage is not None else 0

    async def _read(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise self._too_large()
        parts: list[bytes] = []
        size = 0
        async for part in response.aiter_bytes():
            size += len(part)
            if size > self._max_bytes:
                raise self._too_large()
            parts.append(part)
        return b"".join(parts)

    def _too_large(self) -> BackendError:
        return BackendError("backend_error", f"{self._base} answered more than {self._max_bytes} bytes")

    def _error(self, status: int, content: bytes, dimensions: int | None) -> BackendError:
        error = _http_error(self._base, status, content)
        code, param = _error_fields(content)
        if status == 400 and code == "context_length_exceeded":
            return BackendError("input_too_long", error.message)
        if dimensions is not None and status == 400 and (
                param == "dimensions" or "dimension" in error.message.lower()):
            return BackendError("dimensions_unsupported", error.message)
        return BackendError(_EMBED_CODES.get(error.code, error.code), error.message)

    def _parse(self, content: bytes) -> _Reply:
        try:
            return _Reply.model_validate(json.loads(content))
        except (ValueError, ValidationError) as exc:
            raise BackendError("backend_error", f"{self._base} answered an unexpected body: {content[:200]!r}") from exc

    def _vectors(self, reply: _Reply, count: int, dimensions: int | None) -> Vectors:
        if sorted(d.index for d in reply.data) != list(range(count)):
            raise BackendError("backend_error", f"{self._base} answered {len(reply.data)} vectors for {count} inputs")
        rows = [_decode(d.embedding, self._base) for d in sorted(reply.data, key=lambda d: d.index)]
        width = rows[0].shape[0] if rows else (dimensions or self._dim)
        if any(row.shape[0] != width for row in rows) or width == 0:
            raise BackendError("backend_error", f"{self._base} answered vectors of different or no lengths")
        if dimensions is not None and width != dimensions:
            raise BackendError("dimensions_unsupported",
                               f"{self._config.model} gave {width} dimensions, not {dimensions}")
        vectors = np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise BackendError("backend_error", f"{self._base} answered vectors that are not finite")
        return vectors


def _error_fields(content: bytes) -> tuple[str, str]:
    """An OpenAI-shaped error body's `code` and `param` ("" where absent or unreadable)."""
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        return "", ""
    if not isinstance(error, dict):
        return "", ""
    return str(error.get("code") or ""), str(error.get("param") or "")


def _decode(embedding: str | list[float], base: str) -> Vectors:
    if isinstance(embedding, list):  # a server that ignores encoding_format
        return np.asarray(embedding, dtype=np.float32)
    try:
        raw = base64.b64decode(embedding, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BackendError("backend_error", f"{base} answered a vector that is not base64") from exc
    if len(raw) % 4:
        raise BackendError("backend_error", f"{base} answered a vector of {len(raw)} bytes, not float32s")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
