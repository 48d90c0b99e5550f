"""`POST /v1/embeddings`, OpenAI's embeddings endpoint, on the mesh's embedding workers.

Each request becomes one embed task (docs/protocol.md section 13) on the board the API key
selects, as the chat endpoints do (`openai_api.api_caller`: the same header, auth and owner),
written through the board's gate for new tasks; the answer is read from the task's entry
when it is done, woken by the task's own change (`openai_api._Follower`). A client that hangs
up cancels its task.

Fail closed, as the chat endpoints: a bounded body, strict types, every key known (an unknown
one is 400 `unknown_parameter`), every error in OpenAI's shape. A `model` that no present
embedding worker serves answers 404 `model_not_found` at once when embedding workers are
present; with none present the task waits for one up to the server's queue timeout, then
answers 503 `no_worker` (as a chat request does).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from awareness.states import WorkerPresence
from kanbanmesh.auth import Identity
from kanbanmesh.board.embeddings import (
    MAX_EMBED_DIMENSIONS,
    MAX_EMBED_INPUT_CHARS,
    MAX_EMBED_INPUT_TOKENS,
    MAX_EMBED_INPUTS,
    MAX_TOKEN_ID,
    decode_vectors,
)
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.schema import TaskEntry, TaskKind, TaskRequest
from kanbanmesh.errors import InvalidTaskError
from kanbanmesh.server.http_io import check_declared_length, read_body
from kanbanmesh.server.hub import Hub
from kanbanmesh.server.openai_api import (
    DEFAULT_MAX_REQUEST_BYTES,
    _create,
    _Follower,
    _route,
    _workers,
    api_caller,
    finished_or_gone,
)
from kanbanmesh.server.openai_errors import INVALID_REQUEST, ApiError, internal, invalid, unknown
from kanbanmesh.server.openai_schema import Name, Whole, _Strict, _validation_error, json_object
from kanbanmesh.server.room import BoardRoom

EMBEDDINGS_PATH = "/v1/embeddings"
_UNION_TAG = re.compile(r"^(list\[|constrained-|function-|int$|str$)")

Text = Annotated[str, Field(min_length=1, max_length=MAX_EMBED_INPUT_CHARS)]
TokenId = Annotated[Whole, Field(ge=0, le=MAX_TOKEN_ID)]
Tokens = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_EMBED_INPUT_TOKENS)]


class EmbeddingsRequest(_Strict):
    """OpenAI's embeddings request: `input` a string, strings, token ids or token-id lists."""

    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_EMBED_INPUTS)]
        | Tokens
        | Annotated[list[Tokens], Field(min_length=1, max_length=MAX_EMBED_INPUTS)]
    )
    model: Name = ""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Whole | None = Field(default=None, ge=1, le=MAX_EMBED_DIMENSIONS)
    user: str | None = None  # metadata: checked, not used

    def inputs(self) -> list[str | list[int]]:
        """The inputs as a task's `input`: one per vector wanted."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [list(self.input)]  # one token array
        return list(self.input)  # type: ignore[arg-type]  # texts, or token arrays


def parse_embeddings_request(raw: bytes) -> EmbeddingsRequest:
    """The request in `raw`, checked; raises `ApiError` 400."""
    body = json_object(raw)
    for key in body:
        if key not in EmbeddingsRequest.model_fields:
            raise unknown(str(key)[:100])
    if "input" not in body:
        raise invalid("you must provide an input", param="input", code="missing_required_parameter")
    try:
        return EmbeddingsRequest.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        for error in errors:  # `input` is a union: its members' tags are no keys
            error["loc"] = tuple(p for p in error["loc"] if isinstance(p, int) or not _UNION_TAG.match(p))
        raise _validation_error(errors) from None


def embedding_routes(
    hub: Hub, identify: Callable[[Request, str | None], Identity], queue_timeout_s: float = 30.0,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> list[Route]:
    """`POST /v1/embeddings`, bound to `hub` (mounted before the chat routes' catch-all)."""
    caller = api_caller(hub, identify)

    async def embeddings(request: Request) -> Response:
        check_declared_length(request, max_request_bytes)
        identity, room = await caller(request)
        body = parse_embeddings_request(await read_body(request, max_request_bytes))
        _check_model(room, body.model)
        task = _task(identity, body)
        _create(room, [task], identity)
        outcome = await finished_or_gone(request.receive, [_Follower(room, task.id, queue_timeout_s)])
        if outcome is None:
            return Response(status_code=499)  # the client hung up: nobody reads this
        if isinstance(outcome, ApiError):
            return outcome.response()
        return JSONResponse(_answer(outcome[0], body, room))

    return [_route(EMBEDDINGS_PATH, embeddings, "POST")]


def _embedders(room: BoardRoom) -> list[WorkerPresence]:
    return [w for w in _workers(room) if TaskKind.EMBED.value in w.kinds]


def _check_model(room: BoardRoom, model: str) -> None:
    workers = _embedders(room)
    if model and workers and not any(w.serves(model, TaskKind.EMBED) for w in workers):
        served = sorted({m for w in workers for m in w.models})
        raise ApiError(404, f"embedding model {model[:200]!r} is not served on this board "
                       f"(served: {', '.join(served)})", kind=INVALID_REQUEST, code="model_not_found",
                       param="model")


def _task(identity: Identity, body: EmbeddingsRequest) -> TaskRequest:
    fields: dict[str, Any] = {
        "id": f"api-emb-{uuid.uuid4().hex}",
        "owner": identity.subject if identity.role is TokenRole.CLIENT else "",
        "model": body.model,
        "kind": TaskKind.EMBED.value,
        "input": body.inputs(),
        "dimensions": body.dimensions,
    }
    try:
        return TaskRequest.model_validate(fields)
    except ValidationError as exc:  # the body's checks cover the schema's: a bug if seen
        raise invalid(str(exc.errors()[0]["msg"]), code="invalid_request") from exc


def _answer(entry: TaskEntry, body: EmbeddingsRequest, room: BoardRoom) -> dict[str, Any]:
    """OpenAI's answer: a list of embeddings, in input order, floats or (passed through as the
    board holds them) base64."""
    encoded = entry.embeddings or []
    if len(encoded) != len(entry.input or ()) or not entry.dimensions:
        raise internal("the worker wrote no vectors for every input")
    if body.encoding_format == "base64":
        vectors: list[Any] = list(encoded)
    else:
        try:
            vectors = decode_vectors(encoded, entry.dimensions).tolist()
        except InvalidTaskError as exc:
            raise internal(f"the worker wrote unreadable vectors: {exc}") from exc
    tokens = entry.usage.prompt_tokens if entry.usage else 0
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": body.model or _served_model(room, entry.worker) or "kanbanmesh",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _served_model(room: BoardRoom, worker: str | None) -> str:
    """The model of the worker that ran a task asking for none, while it is present."""
    return next((w.models[0] for w in _embedders(room) if w.id == worker and w.models), "")
