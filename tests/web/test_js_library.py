"""The JavaScript library's own tests (web/test, node's test runner) against a real server,
and its type check."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from kanbanmesh.board import constants as c
from tests.conftest import WorkerPool

pytestmark = pytest.mark.anyio


async def test_js_library_suite(server_url: str, workers: WorkerPool, web_dir: Path) -> None:
    await workers.start(delay_ms=10, slots=2)
    files = sorted(str(path) for path in (web_dir / "test").glob("*.test.mjs"))
    with anyio.fail_after(120):
        done = await anyio.run_process(
            ["node", "--test", *files], cwd=web_dir, check=False,
            # the rotation test starts a server of its own with this interpreter
            env={**os.environ, "KANBANMESH_URL": server_url, "KANBANMESH_PYTHON": sys.executable},
        )
    report = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, report
    assert "# fail 0" in report and "# pass 0" not in report, report


async def test_js_types_check(web_dir: Path) -> None:
    """The library's and the page's JSDoc types hold (tsc --checkJs, strict)."""
    with anyio.fail_after(120):
        done = await anyio.run_process(["node", "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], cwd=web_dir, check=False)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


async def test_the_js_library_reads_close_codes_as_the_python_peer(web_dir: Path) -> None:
    """One list of refusal and fatal close codes: the JS library's (web/src/errors.js) are the
    Python peer's (kanbanmesh/board/constants.py)."""
    script = (
        "import('./src/errors.js').then((m) => console.log(JSON.stringify("
        "{refusal: m.REFUSAL_CLOSE_CODES, fatal: m.FATAL_CLOSE_CODES, rotated: m.CLOSE_BOARD_ROTATED})))"
    )
    with anyio.fail_after(60):
        done = await anyio.run_process(["node", "--input-type=module", "-e", script], cwd=web_dir)
    codes = json.loads(done.stdout)
    assert set(codes["refusal"]) == c.REFUSAL_CLOSE_CODES
    assert set(codes["fatal"]) == c.FATAL_CLOSE_CODES
    assert codes["rotated"] == c.CLOSE_BOARD_ROTATED
