"""The OpenAI-compatible HTTP API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

Each request becomes a task on a board (the `X-Kanbanmesh-Board` header, else the one board
the API key opens, else `default`), one per choice (`n`), written by the server itself through
the board's gate for new tasks, so it shows on the live board and runs on the mesh's workers
like any other. Streaming answers are server-sent events in OpenAI's chunk format, tool calls
as `delta.tool_calls` (`openai_choices`); a client that goes away, streaming or not, cancels
its tasks. With auth on, API keys are the server's tokens
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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
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
from kanbanmesh.board.limits import MAX_SAFE_INTEGER
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.schema import TaskEntry, TaskRequest
from kanbanmesh.board.tool_calls import MalformedToolCall
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import InvalidTaskError, StreamRestartedError, TaskNotFoundError
from kanbanmesh.server.http_io import ClientGone, check_declared_length, read_body, wait_disconnect
from kanbanmesh.server.hub import Hub, TooManyBoardsError
from kanbanmesh.server.openai_choices import (
    ChoiceDeltas,
    finish_reason,
    malformed_call,
    message_choice,
    text_choice,
    tool_calls,
    usage,
)
from kanbanmesh.server.openai_choices import logprobs as entry_logprobs
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
        if conversation is not None and body.choices > 1:
            raise invalid("n > 1 cannot continue a conversation: its next turn would be which "
                          "choice?", param="n")
        _check_model(room, body.model)
        tasks = _tasks(identity, body, conversation)
        _create(room, tasks, identity)
        followers = [_Follower(room, task.id, queue_timeout_s) for task in tasks]
        answer = _Answer(followers, body, kind)
        if body.stream:
            return _TaskStream(followers, answer.stream)
        return await answer.whole(request.receive)

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


def _create(room: BoardRoom, tasks: list[TaskRequest], identity: Identity) -> None:
    """Through the board's one gate for new tasks: the same schema, size and per-owner limits
    as websocket submissions; all of them or none."""
    try:
        room.create_tasks(tasks, identity)
    except UpdateRefused as exc:
        if exc.code == c.CLOSE_TOO_MANY:
            raise ApiError(429, exc.reason, kind="requests", code="rate_limit_exceeded") from exc
        if exc.code == c.CLOSE_TASK_TOO_LARGE:
            raise ApiError(413, exc.reason, kind=INVALID_REQUEST, code="request_too_large") from exc
        raise invalid(exc.reason, code="invalid_request") from exc


def _tasks(identity: Identity, body: Sampling, conversation: str | None) -> list[TaskRequest]:
    """The request's tasks: one per choice (`n`), told apart by their seeds when a seed is
    given (the same seed would sample the same answer n times)."""
    base = f"api-{uuid.uuid4().hex}"
    tasks = []
    try:  # the body's checks cover the schema's: a bug if seen, refused all the same
        params = task_params(body)
        fields: dict[str, Any] = {
            "owner": identity.subject if identity.role is TokenRole.CLIENT else "",
            "model": body.model,
            "conversation": conversation,
            "rag": rag_spec(body),
            **body.task_input(),
        }
        for i in range(body.choices):
            seeded = params
            if params.seed is not None and i:
                seed = params.seed + i if params.seed + i <= MAX_SAFE_INTEGER else params.seed - i
                seeded = params.model_copy(update={"seed": seed})
            task_id = base if body.choices == 1 else f"{base}-{i}"
            tasks.append(TaskRequest.model_validate({**fields, "id": task_id, "params": seeded}))
    except ValidationError as exc:
        raise invalid(str(exc.errors()[0]["msg"]), code="invalid_request") from exc
    return tasks


class _Answer:
    """The answer of one request: its tasks' choices, whole or streamed."""

    def __init__(self, followers: list[_Follower], body: Sampling, kind: str) -> None:
        self.followers, self.body, self.kind = followers, body, kind
        self.chat = kind == "chat.completion"
        self.tools = isinstance(body, ChatRequest) and body.offers_tools
        self.id = followers[0].task_id if len(followers) == 1 else followers[0].task_id.rsplit("-", 1)[0]
        self.model = body.model or "kanbanmesh"

    async def whole(self, receive: Receive) -> Response:
        """The whole answer, once every task is done. A client that hangs up meanwhile cancels
        them (the ASGI receive channel says `http.disconnect`), and so does one failed task
        its siblings: the answer is that failure."""
        outcome = await finished_or_gone(receive, self.followers)
        if outcome is None:
            return Response(status_code=499)  # the client hung up: nobody reads this
        if isinstance(outcome, ApiError):
            return outcome.response()
        return JSONResponse(self._final_object(outcome))

    def _final_object(self, entries: list[TaskEntry]) -> dict[str, Any]:
        choice = message_choice if self.chat else text_choice
        return {"id": self.id, "object": self.kind, "created": int((entries[0].created_at or 0) / 1000),
                "model": self.model, "choices": [choice(i, e) for i, e in enumerate(entries)],
                "usage": usage(entries)}

    async def stream(self, send: MemoryObjectSendStream[str]) -> None:
        """Server-sent events: each choice's chunks as they come, interleaved, then the usage
        chunk (when asked) and `[DONE]`; an error after the first event is an event."""
        created = int(time.time())
        chunk_kind = "chat.completion.chunk" if self.chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {"id": self.id, "object": chunk_kind, "created": created, "model": self.model,
                       "choices": choices, **extra}
            return f"data: {json.dumps(payload)}\n\n"

        def chunk(i: int, delta: dict[str, Any], finish: str | None = None,
                  logprobs: dict[str, Any] | None = None) -> str:
            if self.chat:
                return event([{"index": i, "delta": delta, "finish_reason": finish, "logprobs": logprobs}])
            return event([{"index": i, "text": delta.get("content", ""), "finish_reason": finish,
                           "logprobs": None}])

        entries: list[TaskEntry | None] = [None] * len(self.followers)
        failure: ApiError | None = None

        async def one(i: int, follower: _Follower, scope: anyio.CancelScope) -> None:
            nonlocal failure
            deltas = ChoiceDeltas(follower.task_id, tools=self.tools)
            try:
                if self.chat:
                    await send.send(chunk(i, {"role": "assistant", "content": ""}))
                async for text in follower.pieces():
                    for delta in deltas.feed(text):
                        await send.send(chunk(i, delta))
                entry = await follower.finished()
                for delta in deltas.finish(truncated=entry.finish_reason == "length"):
                    await send.send(chunk(i, delta))
                called = deltas.called or bool(tool_calls(entry))
                await send.send(chunk(i, {}, finish_reason(entry, called), entry_logprobs(entry)))
                entries[i] = entry
            except ApiError as exc:
                failure = failure or exc
            except StreamRestartedError as exc:
                failure = failure or _restarted(exc, follower.room.name)
            except MalformedToolCall as exc:
                failure = failure or malformed_call(follower.task_id, str(exc))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                scope.cancel()  # nobody reads any more
                return
            except Exception:
                log.exception("OpenAI API: streaming task %s failed", follower.task_id)
                failure = failure or internal()
            if failure is not None:
                scope.cancel()

        try:
            tail = ""
            try:
                async with anyio.create_task_group() as tg:
                    for i, follower in enumerate(self.followers):
                        tg.start_soon(one, i, follower, tg.cancel_scope)
                if failure is None and self.body.include_usage:
                    tail = event([], usage=usage([e for e in entries if e is not None]))
            except Exception:
                log.exception("OpenAI API: streaming %s failed", self.id)
                failure = internal()
            if failure is not None:
                # The status line went out with the first event: the error is an event.
                tail = f"data: {json.dumps(failure.body())}\n\n"
            await send.send(f"{tail}data: [DONE]\n\n")
        finally:
            # The client went away (or we are done): a task still running is cancelled.
            for follower in self.followers:
                follower.cancel_unless_done()


async def finished_or_gone(
    receive: Receive, followers: Sequence[_Follower]
) -> list[TaskEntry] | ApiError | None:
    """The tasks' entries, in order, once every one succeeded; the error the first failed
    one answers otherwise (which cancels its siblings); None when the client hung up first,
    which cancels them all (the ASGI receive channel says `http.disconnect`)."""
    entries: list[TaskEntry | None] = [None] * len(followers)
    failure: ApiError | None = None
    try:
        async with anyio.create_task_group() as tg:

            async def cancel_on_disconnect() -> None:
                await wait_disconnect(receive)
                tg.cancel_scope.cancel()

            async def finish(i: int, follower: _Follower) -> None:
                nonlocal failure
                try:
                    entries[i] = await follower.finished()
                except ApiError as exc:
                    failure = failure or exc
                    tg.cancel_scope.cancel()

            tg.start_soon(cancel_on_disconnect)
            async with anyio.create_task_group() as tasks:
                for i, follower in enumerate(followers):
                    tasks.start_soon(finish, i, follower)
            tg.cancel_scope.cancel()
    finally:
        for follower in followers:
            follower.cancel_unless_done()
    if failure is not None:
        return failure
    done = [e for e in entries if e is not None]
    return done if len(done) == len(entries) else None

class _TaskStream(StreamingResponse):
    """Server-sent events of a request's tasks, cancelled however the response ends. The
    events come from `produce`, run beside the response in a task group of its own (one
    follower per choice), through a channel without a buffer: a slow client slows the
    followers, nothing piles up. Starlette watches the client while it streams and stops the
    stream when it hangs up; a client gone before the first event never reads the channel."""

    def __init__(self, followers: list[_Follower],
                 produce: Callable[[MemoryObjectSendStream[str]], Awaitable[None]]) -> None:
        super().__init__(iter(()), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._followers, self._produce = followers, produce

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender, receiver = anyio.create_memory_object_stream[str]()

        async def produce() -> None:
            async with sender:
                try:
                    await self._produce(sender)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # nobody reads any more: the response is over

        async def events() -> AsyncIterator[str]:
            async with receiver:
                async for item in receiver:
                    yield item

        self.body_iterator = events()
        failed: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                try:
                    await super().__call__(scope, receive, send)
                except Exception as exc:  # noqa: BLE001  (raised as itself below, not in a group)
                    failed = exc
                tg.cancel_scope.cancel()
        finally:
            for follower in self._followers:
                follower.cancel_unless_done()
        if failed is not None:
            raise failed


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
