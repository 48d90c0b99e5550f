"""The Firefox extension's own checks: its logic under node's test runner against a real
server (examples/firefox/test), its JSDoc types, and `web-ext lint` on the build."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from tests.conftest import WorkerPool

pytestmark = pytest.mark.anyio


async def run(command: list[str], cwd: Path, timeout_s: float, **env: str) -> tuple[int, str]:
    with anyio.fail_after(timeout_s):
        done = await anyio.run_process(command, cwd=cwd, check=False, env={**os.environ, **env})
    return done.returncode, done.stdout.decode() + done.stderr.decode()


async def test_extension_logic_suite(server_url: str, workers: WorkerPool, extension_dir: Path) -> None:
    """Context menu handler, options store, connection and sidebar streaming (node --test)."""
    await workers.start(delay_ms=10, slots=2)
    files = sorted(str(path) for path in (extension_dir / "test").glob("*.test.mjs"))
    # the tests that restart or secure a server start their own with this interpreter
    code, report = await run(["node", "--test", *files], extension_dir, 180,
                             KANBANMESH_URL=server_url, KANBANMESH_PYTHON=sys.executable)
    assert code == 0, report
    assert "# fail 0" in report and "# pass 0" not in report, report


async def test_extension_types_check(extension_dir: Path) -> None:
    """The extension's JSDoc types hold against Firefox's WebExtension API types (tsc, strict)."""
    code, report = await run(["node", "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], extension_dir, 120)
    assert code == 0, report


async def test_web_ext_lint_passes(built_extension: Path, extension_dir: Path) -> None:
    """Mozilla's linter finds no error, warning or notice in the built extension."""
    code, report = await run(
        ["node", "node_modules/web-ext/bin/web-ext.js", "lint", "--source-dir", str(built_extension), "--output", "json", "--no-config-discovery"],
        extension_dir, 180,
    )
    assert code == 0, report
    summary = json.loads(report[report.index("{"):])["summary"]
    assert summary == {"errors": 0, "notices": 0, "warnings": 0}, report
