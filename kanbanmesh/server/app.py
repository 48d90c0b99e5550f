"""The ASGI application: boards over websocket at `/<board>`, and HTTP on the same port."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import kanbanmesh
from kanbanmesh.board.document import entry_from_fields
from kanbanmesh.errors import InvalidTaskError, TaskNotFoundError
from kanbanmesh.server.channel import StarletteChannel
from kanbanmesh.server.hub import Hub

log = logging.getLogger(__name__)


def create_app(hub: Hub) -> Starlette:
    """Build the application serving `hub`."""

    async def healthz(request: Request) -> Response:
        rooms = hub.rooms
        return JSONResponse(
            {
                "status": "ok",
                "version": kanbanmesh.__version__,
                "boards": sorted(rooms),
                "generations": {name: room.generation for name, room in sorted(rooms.items())},
                "connections": sum(r.connections for r in rooms.values()),
                "unflushed_writes": hub.unflushed_writes,
            }
        )

    async def task_entry(request: Request) -> Response:
        """A task by id: from the live board, or from the archive once it left the board."""
        board, task_id = request.path_params["board"], request.path_params["task_id"]
        if not hub.valid_board(board):
            return JSONResponse({"error": f"invalid board name {board!r}"}, status_code=404)
        room = hub.rooms.get(board)
        if room is not None:
            try:
                column, entry = room.board.read(task_id)
            except (TaskNotFoundError, InvalidTaskError):
                pass
            else:
                return JSONResponse({"column": column.value, "entry": entry.model_dump(mode="json")})
        archived = await hub.archive.get(board, task_id)
        if archived is None:
            return JSONResponse({"error": f"no task {task_id!r} on board {board!r}"}, status_code=404)
        try:
            archived = entry_from_fields(archived).model_dump(mode="json")
        except InvalidTaskError:
            pass  # archived as it was on the board: show it as it is
        return JSONResponse({"column": "archived", "entry": archived})

    async def board_socket(websocket: WebSocket) -> None:
        name = websocket.path_params["board"]
        if not hub.valid_board(name):
            await websocket.send_denial_response(
                PlainTextResponse(f"invalid board name {name!r}\n", status_code=404)
            )
            return
        room = await hub.room(name)
        await websocket.accept()
        await room.serve(StarletteChannel(websocket, "/" + name))

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/boards/{board}/tasks/{task_id}", task_entry),
            WebSocketRoute("/{board}", board_socket),
        ]
    )
