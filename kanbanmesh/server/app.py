"""The ASGI application: boards over websocket at `/<board>`, and HTTP on the same port."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import kanbanmesh
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
                "connections": sum(r.connections for r in rooms.values()),
                "unflushed_writes": hub.unflushed_writes,
            }
        )

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
            WebSocketRoute("/{board}", board_socket),
        ]
    )
