"""Fixtures for the Firefox extension (examples/firefox): its npm packages and build, and a
headless Debian firefox-esr driven over WebDriver BiDi (tests/firefox/bidi.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.firefox.bidi import Firefox, launch
from tests.web.conftest import npm_install, web_dir  # noqa: F401 - web_dir: a fixture used here

EXTENSION = ROOT / "examples" / "firefox"
BUILT = EXTENSION / "dist" / "extension"
ADDON_ID = "firefox@kanbanmesh"  # browser_specific_settings.gecko.id in src/manifest.json
ADDON_UUID = "6b616e62-616e-4d65-8368-000000000001"  # its moz-extension:// host in the tests
FIREFOX = os.environ.get("KANBANMESH_FIREFOX", "firefox-esr")


def ensure_firefox() -> str:
    """Debian's firefox-esr, installed here when missing (as scripts/install.sh does)."""
    found = shutil.which(FIREFOX)
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=600, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "firefox-esr"], check=False, timeout=900, env=env)
        found = shutil.which(FIREFOX)
    if found is None:
        pytest.skip(f"no {FIREFOX}: scripts/install.sh installs Debian's firefox-esr")
    return found


@pytest.fixture(scope="session")
def extension_dir(web_dir: Path) -> Path:  # noqa: F811 - the fixture imported above
    """examples/firefox with its npm packages installed (the library's come with web_dir)."""
    npm_install(EXTENSION)
    return EXTENSION


def build_outdated() -> bool:
    """Whether a source of the extension (or of the library it bundles) is newer than the build."""
    if not (BUILT / "sidebar.js").exists():
        return True
    built = (BUILT / "sidebar.js").stat().st_mtime
    sources = [*EXTENSION.glob("src/**/*"), EXTENSION / "build.mjs", *(ROOT / "web" / "src").glob("*.js")]
    return any(source.stat().st_mtime > built for source in sources if source.is_file())


@pytest.fixture(scope="session")
def built_extension(extension_dir: Path) -> Path:
    """dist/extension, (re)built when missing or older than its sources."""
    if build_outdated():
        subprocess.run(["npm", "run", "build"], cwd=extension_dir, check=True, timeout=300, capture_output=True)
    return BUILT


@pytest.fixture
async def firefox(built_extension: Path) -> AsyncIterator[Firefox]:
    """A headless firefox-esr with the extension installed as a temporary add-on."""
    executable = ensure_firefox()
    async with launch(executable, addon_uuids={ADDON_ID: ADDON_UUID}, timeout_s=30) as browser:
        assert await browser.install_addon(built_extension) == ADDON_ID
        yield browser


def page_url(page: str) -> str:
    """The address of one of the extension's pages, `sidebar` or `options`."""
    return f"moz-extension://{ADDON_UUID}/{page}/{page}.html"
