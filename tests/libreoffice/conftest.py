"""LibreOffice for the extension's tests: Debian's `libreoffice-writer` and `python3-uno`
(installed here when missing), the extension built and installed into a throwaway profile,
and one headless LibreOffice listening on a UNO pipe for the whole session."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import anyio
import pytest

from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "libreoffice"
DRIVE = Path(__file__).with_name("drive.py")
PACKAGES = ("libreoffice-writer", "python3-uno")
OFFICE_PYTHON = "/usr/bin/python3"  # Debian's LibreOffice runs Python components with it
TEXT_NS = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"

sys.path.insert(0, str(EXAMPLE / "pythonpath"))  # kanbanmesh_office's plain-Python modules


def office_installed() -> bool:
    has_uno = subprocess.run([OFFICE_PYTHON, "-c", "import uno"], capture_output=True, check=False).returncode == 0 \
        if Path(OFFICE_PYTHON).exists() else False
    return shutil.which("soffice") is not None and shutil.which("unopkg") is not None and has_uno


def install_office() -> str | None:
    """Install the Debian packages; returns why that was impossible, or None."""
    if shutil.which("apt-get") is None:
        return "no apt-get to install " + " ".join(PACKAGES)
    sudo: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run([*sudo, *command], env=env, capture_output=True, text=True, timeout=1200, check=False)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="session")
def office_packages() -> None:
    if not office_installed():
        why = install_office()
        if why is not None or not office_installed():
            pytest.skip(f"LibreOffice Writer with python3-uno cannot be installed here: {why}")


@pytest.fixture(scope="session")
def oxt(office_packages: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extension, built by its build script as a user builds it."""
    out = tmp_path_factory.mktemp("oxt") / "kanbanmesh.oxt"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "build.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return out


@dataclass
class Office:
    """A headless LibreOffice with the extension installed, reached over a UNO pipe."""

    pipe: str
    work: Path

    async def run(self, request: dict[str, Any], timeout_s: float = 90.0) -> dict[str, Any]:
        """Run one Mesh command through tests/libreoffice/drive.py; returns its report, with
        the saved document's paragraphs under "paragraphs"."""
        name = uuid.uuid4().hex[:8]
        output = self.work / f"{name}.odt"
        path = self.work / f"{name}.json"
        path.write_text(json.dumps({"output": str(output), "timeout_s": timeout_s - 10, **request}))
        with anyio.fail_after(timeout_s):
            done = await anyio.run_process([OFFICE_PYTHON, str(DRIVE), self.pipe, str(path)], check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        report["paragraphs"] = odt_paragraphs(output)
        report["document"] = output
        return report


def start_office(profile: str, pipe: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        return subprocess.Popen(
            ["soffice", profile, "--headless", "--invisible", "--norestore", "--nologo", "--nodefault",
             f"--accept=pipe,name={pipe};urp;"],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )


def stop_office(process: subprocess.Popen[bytes], pipe: str) -> None:
    subprocess.run([OFFICE_PYTHON, str(DRIVE), pipe, "--quit"], capture_output=True, timeout=30, check=False)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def add_extension(oxt: Path, work: Path, profile: str) -> None:
    """`unopkg add` into the throwaway profile. unopkg will not install for a user when run
    as root, so as root it runs as `nobody`, on a copy of the .oxt nobody can read."""
    command = ["unopkg", "add", "--suppress-license", profile, str(oxt)]
    env = dict(os.environ)
    if os.geteuid() == 0:
        shared = work / oxt.name
        shutil.copy(oxt, shared)
        shared.chmod(0o644)
        shutil.chown(work, "nobody")
        command = ["runuser", "-u", "nobody", "--", "env", f"HOME={work}", *command[:-1], str(shared)]
    added = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert added.returncode == 0, f"unopkg add failed: {added.stdout}{added.stderr}"


@pytest.fixture(scope="session")
def office(oxt: Path) -> Iterator[Office]:
    """LibreOffice on a fresh profile with the extension installed by `unopkg add`."""
    work = Path(tempfile.mkdtemp(prefix="kanbanmesh-office-"))  # outside pytest's 0700 tmp: see add_extension
    work.chmod(0o755)
    profile = f"-env:UserInstallation={(work / 'profile').as_uri()}"
    add_extension(oxt, work, profile)
    pipe = f"kanbanmesh-test-{uuid.uuid4().hex[:8]}"
    process = start_office(profile, pipe, work / "soffice.log")
    try:
        yield Office(pipe, work)
    finally:
        stop_office(process, pipe)
        shutil.rmtree(work, ignore_errors=True)


def odt_paragraphs(path: Path) -> list[str]:
    """The paragraphs of a saved .odt, read from its content.xml (spaces, tabs and line
    breaks as ODF writes them)."""
    with zipfile.ZipFile(path) as odt:
        root = ElementTree.fromstring(odt.read("content.xml"))
    body = root.find(".//{urn:oasis:names:tc:opendocument:xmlns:office:1.0}text")
    assert body is not None
    return [_text_of(p) for p in body.iter() if p.tag in (f"{{{TEXT_NS}}}p", f"{{{TEXT_NS}}}h")]


def _text_of(element: ElementTree.Element) -> str:
    parts = [element.text or ""]
    for child in element:
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "s":
            parts.append(" " * int(child.get(f"{{{TEXT_NS}}}c", "1")))
        elif tag == "tab":
            parts.append("\t")
        elif tag == "line-break":
            parts.append("\n")
        else:
            parts.append(_text_of(child))
        parts.append(child.tail or "")
    return "".join(parts)
