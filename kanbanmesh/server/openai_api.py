"""The OpenAI-compatible HTTP API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

Each request becomes a task on a board (the `X-Kanbanmesh-Board` header, else the one board
the API key opens, else `default`), written by the server itself, so it shows on the live board
and runs on the mesh's workers like any other. Streaming answers are server-sent events in
OpenAI's chunk format; a client that goes away cancels its task. With auth on, API keys are the
server's tokens (`Authorization: Bearer`); the task's owner is the key's subject.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from awareness.states import WorkerState, workers_from_states
from kanbanmesh.auth import ALL_BOARDS, AuthError, Identity
from kanbanmesh.auth import Role as AccessRole
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, entry_from_map
from kanbanmesh.board.schema import (
    ChatMessage,
    RagSpec,
    TaskEntry,
    TaskParams,
    TaskRequest,
    TaskStatus,
)
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import InvalidTaskError, TaskNotFoundError
from kanbanmesh.server.hub import Hub
from kanbanmesh.server.room import BoardRoom
from kanbanmesh.server.validation import UpdateRefused

BOARD_HEADER = "x-kanbanmesh-board"
CONVERSATION_HEADER = "x-kanbanmesh-conversation"  # continue this conversation of the key's owner


class ApiError(Exception):
    """An error in OpenAI's shape, with its HTTP status."""

    def __init__(self, status: int, message: str, *, kind: str, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    conversation: str | None = None
    rag: RagSpec | None = None  # retrieval, an extra body field: {"collection": ..., "k": ...}

    def params(self) -> TaskParams:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return TaskParams(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature, top_p=self.top_p, stop=stop, seed=self.seed,
        )

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]


def openai_routes(
    hub: Hub, identify: Callable[[Request, str | None], Identity], queue_timeout_s: float = 30.0
) -> list[Route]:
    """The routes, bound to `hub`; `identify` checks the API key for a board."""

    async def caller(request: Request) -> tuple[Identity, BoardRoom]:
        named = request.headers.get(BOARD_HEADER) or None
        if named is not None and not hub.valid_board(named):
            raise ApiError(400, f"invalid board name {named!r}", kind="invalid_request_error")
        try:
            identity = identify(request, None)  # the board is checked below, once it is known
        except AuthError as exc:
            raise ApiError(exc.status, str(exc), kind="authentication_error" if exc.status == 401
                           else "permission_error") from exc
        board = named or _home_board(identity)
        if not identity.may_open(board):
            raise ApiError(403, f"this API key does not open board {board!r}; name one it opens "
                           f"in the {BOARD_HEADER} header", kind="permission_error")
        return identity, await hub.room(board)

    async def models(request: Request) -> Response:
        try:
            _, room = await caller(request)
        except ApiError as exc:
            return exc.response()
        names = sorted({m for w in _workers(room) for m in w.models})
        return JSONResponse({
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "kanbanmesh"} for m in names],
        })

    async def chat(request: Request) -> Response:
        return await _complete(request, ChatCompletionRequest, "chat.completion")

    async def completions(request: Request) -> Response:
        return await _complete(request, CompletionRequest, "text_completion")

    async def _complete(request: Request, model: type[_Sampling], kind: str) -> Response:
        try:
            identity, room = await caller(request)
            body = _parse(model, await request.body())
            body.conversation = body.conversation or request.headers.get(CONVERSATION_HEADER)
            _check_model(room, body.model)
            task = _task(identity, body)
            if identity.role is AccessRole.CLIENT:
                _admit(room, task.owner)
            room.server_write(lambda board: board.create(task), created=(task.id,))
        except ApiError as exc:
            return exc.response()
        follower = _Follower(room, task.id, queue_timeout_s)
        if body.stream:
            return StreamingResponse(
                _stream(follower, body, kind), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            entry = await follower.finished()
        except ApiError as exc:
            return exc.response()
        finally:
            follower.cancel_unless_done()
        return JSONResponse(_final_object(entry, body, kind))

    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]


def _home_board(identity: Identity) -> str:
    """The board of a request that names none: the API key's board when it opens exactly one,
    else `default`."""
    boards = identity.boards
    return boards[0] if len(boards) == 1 and boards[0] != ALL_BOARDS else c.DEFAULT_BOARD


def _parse(model: type[_Sampling], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{where}: {first['msg']}" if where else first["msg"],
                       kind="invalid_request_error", param=where) from exc


def _workers(room: BoardRoom) -> list[Any]:
    return [w for w in workers_from_states(room.awareness.states()) if w.state is not WorkerState.DRAINING]


def _check_model(room: BoardRoom, model: str) -> None:
    workers = _workers(room)
    if model and workers and not any(w.serves(model) for w in workers):
        served = sorted({m for w in workers for m in w.models})
        raise ApiError(404, f"model {model!r} is not served on this board (served: {', '.join(served)})",
                       kind="invalid_request_error", code="model_not_found", param="model")


def _admit(room: BoardRoom, owner: str) -> None:
    """The board's per-owner limits hold for API requests as for websocket submissions."""
    try:
        room.admit_tasks(owner)
    except UpdateRefused as exc:
        raise ApiError(429, exc.reason, kind="requests", code="rate_limit_exceeded") from exc


def _task(identity: Identity, body: _Sampling) -> TaskRequest:
    fields: dict[str, Any] = {
        "id": f"api-{uuid.uuid4().hex}",
        "owner": identity.subject if identity.role is AccessRole.CLIENT else "",
        "model": body.model,
        "params": body.params(),
        "conversation": body.conversation or None,
        "rag": body.rag,
    }
    if isinstance(body, ChatCompletionRequest):
        fields["messages"] = body.messages
    elif isinstance(body, CompletionRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "one prompt per request", kind="invalid_request_error", param="prompt")
        fields["prompt"] = prompts[0]
    try:
        return TaskRequest.model_validate(fields)
    except ValidationError as exc:
        raise ApiError(400, str(exc.errors()[0]["msg"]), kind="invalid_request_error") from exc


_SAFETY_WAKE_S = 5.0


class _Follower:
    """Watches one task on a room's board: its output as it grows, then its end."""

    def __init__(self, room: BoardRoom, task_id: str, queue_timeout_s: float) -> None:
        self.room, self.task_id, self.queue_timeout_s = room, task_id, queue_timeout_s
        self.done = False

    def _find(self) -> tuple[Column, Any] | None:
        try:
            return self.room.board.entry(self.task_id)
        except TaskNotFoundError:
            return None

    async def texts(self) -> AsyncIterator[str]:
        """The output as it grows (whole text each time it changed), until the task is done."""
        queued_until = anyio.current_time() + self.queue_timeout_s
        last = None
        with self.room.following(self.task_id) as signal:
            while True:
                # Taken before the read: a change made while the caller holds our text wakes us.
                changed = signal.upcoming()
                found = self._find()
                if found is None:
                    raise ApiError(500, "the task left the board", kind="server_error")
                column, ymap = found
                now = anyio.current_time()
                if column is Column.TODO and now > queued_until:
                    raise ApiError(503, "no worker took the request in time; try again later",
                                   kind="server_error", code="no_worker")
                text = _output(ymap, column)
                if text != last:
                    last = text
                    yield text
                if column is Column.DONE:
                    self.done = True
                    return
                # Queued: wake at the queue timeout. Otherwise the signal wakes us; the
                # timeout is only a safety net.
                wait_s = queued_until - now if column is Column.TODO else _SAFETY_WAKE_S
                with anyio.move_on_after(max(wait_s, 0.0) + 0.01):
                    await changed.wait()

    async def finished(self) -> TaskEntry:
        async for _ in self.texts():
            pass
        found = self._find()
        if found is None:
            raise ApiError(500, "the task left the board", kind="server_error")
        try:
            entry = entry_from_map(found[1])
        except InvalidTaskError as exc:
            raise ApiError(500, str(exc), kind="server_error") from exc
        _raise_for_failure(entry)
        return entry

    def cancel_unless_done(self) -> None:
        found = self._find()
        if found is not None and found[0] is not Column.DONE and not found[1].get(c.F_CANCEL):
            self.room.server_write(lambda board: _cancel(board, self.task_id))


def _cancel(board: BoardDoc, task_id: str) -> None:
    _, ymap = board.entry(task_id)
    ymap[c.F_CANCEL] = True


def _output(ymap: Any, column: Column) -> str:
    if column is Column.DONE and ymap.get(c.F_STATUS) == TaskStatus.SUCCEEDED.value:
        result = ymap.get(c.F_RESULT)
        if isinstance(result, str):
            return result
    output = ymap.get(c.F_OUTPUT)
    return str(output) if output is not None else ""


_CLIENT_ERRORS = {"context_overflow": (400, "context_length_exceeded"), "bad_params": (400, "invalid_request")}


def _raise_for_failure(entry: TaskEntry) -> None:
    if entry.status is TaskStatus.SUCCEEDED:
        return
    if entry.status is TaskStatus.CANCELLED:
        raise ApiError(499, "the request was cancelled", kind="server_error", code="cancelled")
    error = entry.error
    code = error.code if error else "failed"
    status, openai_code = _CLIENT_ERRORS.get(code, (500, code))
    raise ApiError(status, error.message if error else "the task failed",
                   kind="invalid_request_error" if status == 400 else "server_error", code=openai_code)


def _usage(entry: TaskEntry) -> dict[str, int]:
    usage = entry.usage
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else entry.tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _final_object(entry: TaskEntry, body: _Sampling, kind: str) -> dict[str, Any]:
    text = entry.result or ""
    base = {"id": entry.id, "object": kind, "created": int((entry.created_at or 0) / 1000),
            "model": body.model or "kanbanmesh", "usage": _usage(entry)}
    if kind == "chat.completion":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": entry.finish_reason or "stop"}
    else:
        choice = {"index": 0, "text": text, "finish_reason": entry.finish_reason or "stop", "logprobs": None}
    return {**base, "choices": [choice]}


async def _stream(follower: _Follower, body: _Sampling, kind: str) -> AsyncIterator[str]:
    """Server-sent events: the answer in OpenAI's chunk format, then `[DONE]`."""
    chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"
    created = int(time.time())
    model = body.model or "kanbanmesh"

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        payload = {"id": follower.task_id, "object": chunk_kind, "created": created, "model": model,
                   "choices": choices, **extra}
        return f"data: {json.dumps(payload)}\n\n"

    def piece(text: str, finish: str | None = None) -> dict[str, Any]:
        if kind == "chat.completion":
            return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

    try:
        if kind == "chat.completion":
            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        sent = ""
        try:
            async for text in follower.texts():
                if text.startswith(sent) and len(text) > len(sent):
                    yield event([piece(text[len(sent):])])
                    sent = text
            entry = await follower.finished()
        except ApiError as exc:
            yield f"data: {json.dumps({'error': {'message': exc.message, 'type': exc.kind, 'code': exc.code}})}\n\n"
            yield "data: [DONE]\n\n"
            return
        yield event([piece("", entry.finish_reason or "stop")])
        if body.include_usage:
            yield event([], usage=_usage(entry))
        yield "data: [DONE]\n\n"
    finally:
        # The client went away (or we are done): a task still running is cancelled.
        follower.cancel_unless_done()

