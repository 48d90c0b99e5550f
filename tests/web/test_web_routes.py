"""The page's HTTP routes: served beside the boards' websockets, and honest when unbuilt."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from client_sdk import AsyncClient
from kanbanmesh.auth import OPEN_ACCESS, AuthError, Identity
from kanbanmesh.server.web import web_routes

pytestmark = pytest.mark.anyio


def open_identify(connection: HTTPConnection, board: str) -> Identity:
    return OPEN_ACCESS


def strict_identify(connection: HTTPConnection, board: str) -> Identity:
    raise AuthError("token expired")


def app(static_dir: Path, identify=open_identify) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    routes = web_routes(identify, lambda board: board != "bad board", static_dir)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=routes)), base_url="http://test")


async def test_an_unbuilt_page_says_how_to_build_it(tmp_path: Path) -> None:
    async with app(tmp_path / "missing") as http:
        reply = await http.get("/")
        assert reply.status_code == 503 and "scripts/install.sh" in reply.text
        assert (await http.get("/assets/board.js")).status_code == 404


async def test_only_the_page_files_are_served(tmp_path: Path) -> None:
    for name in ("index.html", "board.js", "board.css", "secret.txt"):
        (tmp_path / name).write_text(name)
    async with app(tmp_path) as http:
        page = await http.get("/")
        assert page.status_code == 200 and page.text == "index.html"
        assert page.headers["content-type"].startswith("text/html")
        script = await http.get("/assets/board.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert (await http.get("/assets/secret.txt")).status_code == 404
        assert (await http.get("/assets/..%2Fsecret.txt")).status_code == 404


async def test_whoami_answers_who_a_token_is(tmp_path: Path) -> None:
    async with app(tmp_path) as http:
        assert (await http.get("/boards/default/whoami")).json() == {
            "board": "default", "auth": False, "subject": None, "role": "admin", "refused": None,
        }
        assert (await http.get("/boards/bad board/whoami")).status_code == 404
    async with app(tmp_path, strict_identify) as http:
        reply = await http.get("/boards/default/whoami?token=x")
        assert reply.status_code == 200  # an answer, not a failed request: no console error
        assert reply.json()["refused"] == {"status": 401, "reason": "token expired"}


async def test_the_page_and_the_board_websocket_share_the_port(server_url: str, page_assets: Path) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get("http" + server_url[2:] + "/")
        assert page.status_code == 200 and "/assets/board.js" in page.text
        assert (await http.get("http" + server_url[2:] + "/assets/board.css")).status_code == 200
    async with AsyncClient(server_url) as client:  # ws://.../default is still the board
        assert (await client.submit("still a board")).id
