"""The live board page at `/`, its assets under `/assets/`, and `GET /boards/{board}/whoami`.

The page is built from `web/` (vanilla JS, with `yjs` and `y-websocket` bundled by esbuild)
into `kanbanmesh/server/static/` by `scripts/install.sh`; nothing is fetched from a CDN. A
server whose assets were never built still runs: `/` then explains how to build them.

None of these routes clash with the boards' websockets at `/<board>`: Starlette matches plain
`Route`s on HTTP requests only and `WebSocketRoute`s on upgrades only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from kanbanmesh.auth import OPEN_ACCESS, AuthError, Identity

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX = "index.html"
# Every file the page may ask for, with its type: a fixed list, so no path reaches the disk
# unchecked.
ASSETS = {
    "board.js": "text/javascript; charset=utf-8",
    "board.css": "text/css; charset=utf-8",
    "board.js.map": "application/json",
}
BUILD_HINT = "run `bash scripts/install.sh`, or `cd web && npm ci && npm run build`"
# The browser revalidates (ETag) on every load, so a rebuilt bundle is picked up at once.
NO_CACHE = {"cache-control": "no-cache"}

Identify = Callable[[HTTPConnection, str], Identity]


def page_built(static_dir: Path = STATIC_DIR) -> bool:
    """Whether the board page's files are there to serve."""
    return (static_dir / INDEX).is_file() and all((static_dir / name).is_file() for name in ("board.js", "board.css"))


def web_routes(identify: Identify, valid_board: Callable[[str], bool], static_dir: Path = STATIC_DIR) -> list[Route]:
    """The page's routes; `identify` checks a token for a board as the websocket does."""

    async def page(request: Request) -> Response:
        if not page_built(static_dir):
            return PlainTextResponse(
                f"The kanbanmesh board page is not built on this server ({static_dir} is missing "
                f"its files): {BUILD_HINT}. Boards, the API and /healthz work without it.\n",
                status_code=503,
            )
        return FileResponse(static_dir / INDEX, media_type="text/html; charset=utf-8", headers=NO_CACHE)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        path = static_dir / name
        if name not in ASSETS or not path.is_file():
            return PlainTextResponse(f"no asset {name!r}\n", status_code=404)
        return FileResponse(path, media_type=ASSETS[name], headers=NO_CACHE)

    async def whoami(request: Request) -> Response:
        """Who a token is on a board, asked before any websocket: a browser cannot read the
        HTTP status of a refused upgrade. A refused token is an answer, not a failed request
        (200, with `refused`), so a page asking for a token logs no error in its console."""
        board = request.path_params["board"]
        if not valid_board(board):
            return JSONResponse({"error": f"invalid board name {board!r}"}, status_code=404)
        try:
            identity = identify(request, board)
        except AuthError as exc:
            refused = {"status": exc.status, "reason": str(exc)}
            return JSONResponse({"board": board, "auth": True, "subject": None, "role": None, "refused": refused})
        is_open = identity is OPEN_ACCESS
        return JSONResponse({
            "board": board,
            "auth": not is_open,
            "subject": None if is_open else identity.subject,
            "role": identity.role.value,
            "refused": None,
        })

    return [
        Route("/", page),
        Route("/assets/{name}", asset),
        Route("/boards/{board}/whoami", whoami),
    ]
