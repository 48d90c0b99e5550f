"""Fixtures for the board page and the JS library: their npm packages and bundle, and a
headless Chromium (Debian's, driven by Playwright; browsers are never downloaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from kanbanmesh.server.web import STATIC_DIR, page_built
from tests.conftest import ROOT

WEB = ROOT / "web"
CHROMIUM = Path(os.environ.get("KANBANMESH_CHROMIUM", "/usr/bin/chromium"))
# What the issue asks of a browser here: no sandbox (root in a container), no GPU, and no
# traffic of its own (updates, first-run pages) that could slow or disturb a test.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]
TIMEOUT_MS = 30_000  # for every wait in the page: 2 shared cores can be slow


def npm_install(directory: Path) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: scripts/install.sh installs the JS packages")
    if not (directory / "node_modules" / "yjs").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=directory, check=True, timeout=600)


@pytest.fixture(scope="session")
def web_dir() -> Path:
    """web/ with its npm packages installed (installed here if missing)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: scripts/install.sh installs it with npm")
    npm_install(WEB)
    return WEB


def bundle_outdated(web_dir: Path) -> bool:
    """Whether a source of the page changed since the bundle was built (or there is none)."""
    if not page_built(STATIC_DIR):
        return True
    built = (STATIC_DIR / "board.js").stat().st_mtime
    sources = [*web_dir.glob("src/*.js"), *web_dir.glob("page/*")]
    return any(source.stat().st_mtime > built for source in sources)


@pytest.fixture(scope="session")
def page_assets(web_dir: Path) -> Path:
    """The built board page, (re)built here when missing or older than its sources, as
    scripts/install.sh does: the tests always see the page as it is in the tree."""
    if bundle_outdated(web_dir):
        subprocess.run(["npm", "run", "build"], cwd=web_dir, check=True, timeout=300)
    return STATIC_DIR


@dataclass
class PageProblems:
    """What a page said went wrong: console errors and uncaught exceptions."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium, one per test: the servers under test live in the test's event
    loop, and Playwright's connection must live in that same loop."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: scripts/install.sh installs Debian's chromium")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


OpenPage = Callable[..., Awaitable[tuple[Any, PageProblems]]]


@pytest.fixture
async def open_page(browser: Any, page_assets: Path) -> AsyncIterator[OpenPage]:
    """`await open_page(http_url, width=..., height=...)`: a fresh browser context (its own
    localStorage) on the board page, and the problems it reports."""
    contexts: list[Any] = []

    async def open_(url: str, *, width: int = 1440, height: int = 900) -> tuple[Any, PageProblems]:
        context = await browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        problems = PageProblems()
        problems.watch(page)
        await page.goto(url)
        return page, problems

    yield open_
    for context in contexts:
        with anyio.move_on_after(10, shield=True):
            await context.close()


def http_url(ws_url: str) -> str:
    return "http" + ws_url[2:] + "/"
