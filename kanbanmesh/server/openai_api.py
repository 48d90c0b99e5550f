"""The OpenAI-compatible HTTP API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

Each request becomes a task on a board (the `X-Kanbanmesh-Board` header, else the one board
the API key opens, else `default`), written by the server itself through the board's gate for
new tasks, so it shows on the live board and runs on the mesh's workers like any other.
Streaming answers are server-sent events in OpenAI's chunk format; a client that goes away,
streaming or not, cancels its task. With auth on, API keys are the server's tokens
(`Authorization: Bearer`); the task's owner is the key's subject.

Hostile input fails closed: the body is bounded before it is read (`http_io`), checked key by
key (`openai_schema`), and every error, a task's failure included, answers in OpenAI's shape
(`openai_errors`) with a status the client can act on; nothing a client sends reaches a plain
500, after which uvicorn would drop the client's keep-alive connection.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from awareness.states import WorkerState, workers_from_states
from kanbanmesh.auth import ALL_BOARDS, AuthError, Identity
from kanbanmesh.board import constants as c
from kanbanmesh.board.document import BoardDoc, entry_from_map
from kanbanmesh.board.follow import TaskFollower
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.schema import TaskEntry, TaskRequest
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import InvalidTaskError, StreamRestartedError, TaskNotFoundError
from kanbanmesh.server.http_io import ClientGone, check_declared_length, read_body, wait_disconnect
from kanbanmesh.server.hub import Hub, TooManyBoardsError
from kanbanmesh.server.openai_errors import (
    INVALID_REQUEST,
    SERVER_ERROR,
    ApiError,
    failure_error,
    internal,
    invalid,
)
from kanbanmesh.server.openai_schema import (
    MAX_NAME_CHARS,
    ChatRequest,
    CompletionRequest,
    Sampling,
    parse_request,
    rag_spec,
    task_params,
)
from kanbanmesh.server.room import BoardRoom
from kanbanmesh.server.validation import UpdateRefused

log = logging.getLogger(__name__)

BOARD_HEADER = "x-kanbanmesh-board"
CONVERSATION_HEADER = "x-kanbanmesh-conversation"  # continue this conversation of the key's owner
# The default body limit: `Settings.request_bytes_limit()` for the default `max_task_bytes`.
DEFAULT_MAX_REQUEST_BYTES = 2 * (1 << 20) + (64 << 10)
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

Handler = Callable[[Request], Awaitable[Response]]


Caller = Callable[[Request], Awaitable[tuple[Identity, BoardRoom]]]


def api_caller(hub: Hub, identify: Callable[[Request, str | None], Identity]) -> Caller:
    """Who makes a request and the room of the board it names: the API key checked (401/403
    in OpenAI's shape), the board from the `X-Kanbanmesh-Board` header or the key's own."""

    async def caller(request: Request) -> tuple[Identity, BoardRoom]:
        named = request.headers.get(BOARD_HEADER) or None
        if named is not None and not hub.valid_board(named):
            raise invalid(f"invalid board name {named[:80]!r}", code="invalid_board")
        try:
            identity = identify(request, None)  # the board is checked below, once it is known
        except AuthError as exc:
            raise ApiError(exc.status, str(exc), kind="authentication_error" if exc.status == 401
                           else "permission_error") from exc
        board = named or _home_board(identity)
        if not identity.may_open(board):
            raise ApiError(403, f"this API key does not open board {board!r}; name one it opens "
                           f"in the {BOARD_HEADER} header", kind="permission_error")
        try:
            return identity, await hub.room(board)
        except TooManyBoardsError as exc:
            raise ApiError(503, str(exc), kind="server_error", code="too_many_boards") from exc

    return caller


def openai_routes(
    hub: Hub, identify: Callable[[Request, str | None], Identity], queue_timeout_s: float = 30.0,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> list[Route]:
    """The routes, bound to `hub`; `identify` checks the API key for a board. A request body
    over `max_request_bytes` answers 413 before it is read whole."""

    caller = api_caller(hub, identify)

    async def models(request: Request) -> Response:
        _, room = await caller(request)
        names = sorted({m for w in _workers(room) for m in w.models})
        return JSONResponse({
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "kanbanmesh"} for m in names],
        })

    async def chat(request: Request) -> Response:
        return await complete(request, ChatRequest, "chat.completion")

    async def completions(request: Request) -> Response:
        return await complete(request, CompletionRequest, "text_completion")

    async def complete(request: Request, model: type[Sampling], kind: str) -> Response:
        check_declared_length(request, max_request_bytes)  # before anything else: nothing read
        identity, room = await caller(request)
        body = parse_request(await read_body(request, max_request_bytes), model)
        conversation = body.conversation or _conversation_header(request)
        _check_model(room, body.model)
        task = _task(identity, body, conversation)
        _create(room, task, identity)
        follower = _Follower(room, task.id, queue_timeout_s)
        if body.stream:
            return _TaskStream(follower, _stream(follower, body, kind))
        return await _answer(request.receive, follower, body, kind)

    async def not_found(request: Request) -> Response:
        raise ApiError(404, f"invalid URL ({request.method} {request.url.path[:200]})",
                       kind=INVALID_REQUEST, code="unknown_url")

    return [
        _route("/v1/models", models, "GET"),
        _route("/v1/chat/completions", chat, "POST"),
        _route("/v1/completions", completions, "POST"),
        _route("/v1/{path:path}", not_found, None),
    ]


def _route(path: str, handler: Handler, method: str | None) -> Route:
    """A route that answers every error in OpenAI's shape: a wrong method 405, an `ApiError`
    its status, anything unexpected a JSON 500 (logged). Never a plain-text 500, after which
    uvicorn would close the connection under a client that keeps it alive."""

    async def endpoint(request: Request) -> Response:
        try:
            if method is not None and request.method != method:
                raise ApiError(405, f"{request.method} is not allowed here; use {method}",
                               kind=INVALID_REQUEST, code="method_not_allowed")
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except ClientGone:
            return Response(status_code=400)  # nobody is left to read an answer
        except Exception:
            log.exception("OpenAI API: %s %s failed", request.method, request.url.path)
            return internal().response()

    return Route(path, endpoint, methods=_ALL_METHODS)


def _home_board(identity: Identity) -> str:
    """The board of a request that names none: the API key's board when it opens exactly one,
    else `default`."""
    boards = identity.boards
    return boards[0] if len(boards) == 1 and boards[0] != ALL_BOARDS else c.DEFAULT_BOARD


def _conversation_header(request: Request) -> str | None:
    value = request.headers.get(CONVERSATION_HEADER) or None
    if value is not None and len(value) > MAX_NAME_CHARS:
        raise invalid(f"the {CONVERSATION_HEADER} header is over {MAX_NAME_CHARS} characters")
    return value


def _workers(room: BoardRoom) -> list[Any]:
    return [w for w in workers_from_states(room.awareness.states()) if w.state is not WorkerState.DRAINING]


def _check_model(room: BoardRoom, model: str) -> None:
    workers = _workers(room)
    if model and workers and not any(w.serves(model) for w in workers):
        served = sorted({m for w in workers for m in w.models})
        raise ApiError(404, f"model {model!r} is not served on this board (served: {', '.join(served)})",
                       kind=INVALID_REQUEST, code="model_not_found", param="model")


def _create(room: BoardRoom, task: TaskRequest, identity: Identity) -> None:
    """Through the board's one gate for new tasks: the same schema, size and per-owner limits
    as websocket submissions."""
    try:
        room.create_task(task, identity)
    except UpdateRefused as exc:
        if exc.code == c.CLOSE_TOO_MANY:
            raise ApiError(429, exc.reason, kind="requests", code="rate_limit_exceeded") from exc
        if exc.code == c.CLOSE_TASK_TOO_LARGE:
            raise ApiError(413, exc.reason, kind=INVALID_REQUEST, code="request_too_large") from exc
        raise invalid(exc.reason, code="invalid_request") from exc


def _task(identity: Identity, body: Sampling, conversation: str | None) -> TaskRequest:
    fields: dict[str, Any] = {
        "id": f"api-{uuid.uuid4().hex}",
        "owner": identity.subject if identity.role is TokenRole.CLIENT else "",
        "model": body.model,
        "params": task_params(body),
        "conversation": conversation,
        "rag": rag_spec(body),
        **body.task_input(),
    }
    try:
        return TaskRequest.model_validate(fields)
    except ValidationError as exc:  # the body's checks cover the schema's: a bug if seen
        raise invalid(str(exc.errors()[0]["msg"]), code="invalid_request") from exc


async def _answer(receive: Receive, follower: _Follower, body: Sampling, kind: str) -> Response:
    """The whole answer of a non-streaming request, once its task is done."""
    outcome = await finished_or_gone(receive, follower)
    if outcome is None:
        return Response(status_code=499)  # the client hung up: nobody reads this
    if isinstance(outcome, ApiError):
        return outcome.response()
    return JSONResponse(_final_object(outcome, body, kind))


async def finished_or_gone(receive: Receive, follower: _Follower) -> TaskEntry | ApiError | None:
    """The task's entry once it succeeded, the error it answers otherwise; None when the
    client hung up first, which cancels the task (the ASGI receive channel says
    `http.disconnect`)."""
    outcome: TaskEntry | ApiError | None = None
    try:
        async with anyio.create_task_group() as tg:

            async def cancel_on_disconnect() -> None:
                await wait_disconnect(receive)
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_on_disconnect)
            try:
                outcome = await follower.finished()
            except ApiError as exc:
                outcome = exc
            tg.cancel_scope.cancel()
    finally:
        follower.cancel_unless_done()
    return outcome


class _TaskStream(StreamingResponse):
    """Server-sent events of one task, cancelled however the response ends. Starlette watches
    the client while it streams and stops the stream when it hangs up; a client gone before
    the first event never starts the generator, whose own `finally` would then not run."""

    def __init__(self, follower: _Follower, events: AsyncIterator[str]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})
        self._follower = follower

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._follower.cancel_unless_done()


_SAFETY_WAKE_S = 5.0


class _Follower:
    """Watches one task on a room's board (`kanbanmesh.board.follow`): its text as it grows,
    then its end."""

    def __init__(self, room: BoardRoom, task_id: str, queue_timeout_s: float) -> None:
        self.room, self.task_id, self.queue_timeout_s = room, task_id, queue_timeout_s
        self.done = False
        # The stream ended on a diverging retry: the task runs on, its final text readable at
        # /boards/<board>/tasks/<id> (protocol sections 5 and 8), as the SDK's `result()`
        # after `StreamRestartedError`.
        self.restarted = False

    def _find(self) -> tuple[Column, Any] | None:
        try:
            return self.room.board.entry(self.task_id)
        except TaskNotFoundError:
            return None

    async def pieces(self, *, text: bool = True) -> AsyncIterator[str]:
        """What the task's text gained, as it comes, until the task is done (`text=False`:
        nothing, only the wait for the end).

        Raises:
            StreamRestartedError: a retry's text differs from what was handed out.
        """
        queued_until = anyio.current_time() + self.queue_timeout_s

        def pace(follower: TaskFollower) -> float:
            if follower.column is None:
                raise internal("the task left the board")
            if follower.column is not Column.TODO:
                return _SAFETY_WAKE_S  # the task's signal wakes us; this is a safety net
            wait_s = queued_until - anyio.current_time()
            if wait_s < 0:
                raise ApiError(503, "no worker took the request in time; try again later",
                               kind=SERVER_ERROR, code="no_worker")
            return wait_s + 0.01

        with (
            self.room.following(self.task_id) as signal,
            TaskFollower(lambda: self.room.board, self.task_id, text=text) as follower,
        ):
            try:
                async for piece in follower.pieces(signal, pace):
                    yield piece
            except StreamRestartedError:
                self.restarted = True
                raise
        self.done = True

    async def finished(self) -> TaskEntry:
        if not self.done:
            async for _ in self.pieces(text=False):
                pass
        found = self._find()
        if found is None:
            raise internal("the task left the board")
        try:
            entry = entry_from_map(found[1])
        except InvalidTaskError as exc:
            raise internal(str(exc)) from exc
        failure = failure_error(entry)
        if failure is not None:
            raise failure
        return entry

    def cancel_unless_done(self) -> None:
        if self.restarted:
            return
        found = self._find()
        if found is not None and found[0] is not Column.DONE and not found[1].get(c.F_CANCEL):
            self.room.server_write(lambda board: _cancel(board, self.task_id))


def _cancel(board: BoardDoc, task_id: str) -> None:
    _, ymap = board.entry(task_id)
    ymap[c.F_CANCEL] = True


def _restarted(exc: StreamRestartedError, board: str) -> ApiError:
    """The error event of a stream that ended on a diverging retry (protocol section 5)."""
    return ApiError(500, f"{exc}; the task goes on, its final text at /boards/{board}/tasks/{exc.task_id}",
                    kind=SERVER_ERROR, code="stream_restarted")


def _usage(entry: TaskEntry) -> dict[str, Any]:
    usage = entry.usage
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else entry.tokens
    cached = usage.cached_tokens if usage else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _final_object(entry: TaskEntry, body: Sampling, kind: str) -> dict[str, Any]:
    text = entry.result or ""
    base = {"id": entry.id, "object": kind, "created": int((entry.created_at or 0) / 1000),
            "model": body.model or "kanbanmesh", "usage": _usage(entry)}
    if kind == "chat.completion":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": entry.finish_reason or "stop"}
    else:
        choice = {"index": 0, "text": text, "finish_reason": entry.finish_reason or "stop", "logprobs": None}
    return {**base, "choices": [choice]}


async def _stream(follower: _Follower, body: Sampling, kind: str) -> AsyncIterator[str]:
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
        async for text in follower.pieces():
            yield event([piece(text)])
        entry = await follower.finished()
        yield event([piece("", entry.finish_reason or "stop")])
        if body.include_usage:
            yield event([], usage=_usage(entry))
        yield "data: [DONE]\n\n"
    except ApiError as exc:
        # The status line went out with the first event: the error is an event.
        yield f"data: {json.dumps(exc.body())}\n\n"
        yield "data: [DONE]\n\n"
    except StreamRestartedError as exc:
        yield f"data: {json.dumps(_restarted(exc, follower.room.name).body())}\n\n"
        yield "data: [DONE]\n\n"
    except Exception:
        log.exception("OpenAI API: streaming task %s failed", follower.task_id)
        yield f"data: {json.dumps(internal().body())}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        # The client went away (or we are done): a task still running is cancelled.
        follower.cancel_unless_done()

