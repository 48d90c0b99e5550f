"""Build the LibreOffice extension, examples/libreoffice/dist/kanbanmesh.oxt.

    .venv/bin/python examples/libreoffice/build.py [--out FILE] [--office-python PATH]
                                                    [--python-version 3.11] [--platform TAG]

Run it with the project's interpreter: the extension carries the kanbanmesh SDK as it is in
this tree. The .oxt holds, under `pythonpath/` (which LibreOffice puts on the Python path of
the extension's component):

- `kanbanmesh_office`, the extension's own modules;
- the SDK's modules: `client_sdk` and the modules of this tree it imports (found by importing
  it, so the list follows the SDK), not the server, broker or workers;
- the SDK's third-party dependencies (anyio, httpx, pycrdt, pydantic, PyJWT, websockets and
  what they need), installed by pip as wheels for LibreOffice's Python (its version and
  platform), pinned to the versions this interpreter has: the ones the SDK is tested with.

Then it imports the SDK from the staged folder with LibreOffice's Python, site-packages off,
so a missing module fails the build rather than a user's first click.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_OUT = HERE / "dist" / "kanbanmesh.oxt"
# What the SDK imports from outside the standard library (pip adds their dependencies).
SDK_REQUIREMENTS = ("anyio", "httpx", "pycrdt", "pydantic", "PyJWT", "websockets")
MIN_PYTHON = (3, 11)  # the SDK's own floor (pyproject.toml: requires-python)
# Interpreters LibreOffice runs extensions with: its own where it bundles one, else the system's.
OFFICE_PYTHONS = (
    "/usr/lib/libreoffice/program/python", "/opt/libreoffice/program/python", "/usr/bin/python3",
)

_CLOSURE = """
import json, pathlib, sys
root = pathlib.Path.cwd().resolve()
prefix = pathlib.Path(sys.prefix).resolve()  # a venv inside the tree is not the tree
import client_sdk
files = set()
for module in list(sys.modules.values()):
    path = pathlib.Path(getattr(module, "__file__", None) or "/").resolve()
    if path.is_relative_to(root) and not path.is_relative_to(prefix):
        files.add(str(path.relative_to(root)))
print(json.dumps(sorted(files)))
"""


class BuildError(Exception):
    """Raised when the extension cannot be built; the message says why."""


def office_python(explicit: str | None) -> str | None:
    """LibreOffice's Python: the one given, or the first candidate that can import `uno`."""
    candidates = [explicit] if explicit else list(OFFICE_PYTHONS)
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            probe = subprocess.run([candidate, "-c", "import uno"], capture_output=True, check=False)
            if probe.returncode == 0:
                return candidate
    if explicit:
        raise BuildError(f"{explicit} cannot import uno: it is not LibreOffice's Python")
    return None


def python_version(python: str | None) -> str:
    if python is None:
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    out = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def sdk_files() -> list[str]:
    """The files of this tree that `import client_sdk` loads, relative to the tree."""
    out = subprocess.run(
        [sys.executable, "-c", _CLOSURE], cwd=ROOT, capture_output=True, text=True, check=True,
    )
    files: list[str] = json.loads(out.stdout)
    return files


def constraints() -> str:
    """Every distribution of this interpreter, pinned: the SDK's dependencies come in the
    versions it is tested with."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and not name.lower().startswith("kanbanmesh"):
            pins[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(sorted(pins.values())) + "\n"


def install_dependencies(target: Path, version: str, platform_tag: str, work: Path) -> None:
    pins = work / "constraints.txt"
    pins.write_text(constraints())
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(target), "--only-binary=:all:", "--no-compile",
        "--python-version", version, "--implementation", "cp", "--platform", platform_tag,
        "--constraint", str(pins), *SDK_REQUIREMENTS,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"pip could not install the SDK's dependencies:\n{result.stderr.strip()}")
    shutil.rmtree(target / "bin", ignore_errors=True)


def stage(staging: Path, version: str, platform_tag: str) -> None:
    from kanbanmesh import __version__

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(HERE / "extension", staging, ignore=ignore)
    description = staging / "description.xml"
    description.write_text(description.read_text().replace("@VERSION@", __version__))
    pythonpath = staging / "pythonpath"
    shutil.copytree(HERE / "pythonpath", pythonpath, ignore=ignore)
    for relative in sdk_files():
        destination = pythonpath / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, destination)
    install_dependencies(pythonpath, version, platform_tag, staging.parent)


def check_imports(python: str, staging: Path) -> None:
    """Import the SDK and the extension's logic with LibreOffice's Python from the staged
    folder alone (`-S`: no site-packages)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import client_sdk, kanbanmesh_office, kanbanmesh_office.session; "
        "client_sdk.Client('ws://127.0.0.1:1')"
    )
    result = subprocess.run(
        [python, "-S", "-c", code, str(staging / "pythonpath")], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"the SDK does not import in {python} from the extension:\n{result.stderr.strip()}")


def pack(staging: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".oxt.part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as oxt:
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                oxt.write(path, path.relative_to(staging).as_posix())
    partial.replace(out)


def build(out: Path, *, office: str | None, version: str | None, platform_tag: str | None) -> Path:
    """Build the .oxt at `out`; returns it."""
    python = office_python(office)
    version = version or python_version(python)
    if tuple(int(part) for part in version.split(".")[:2]) < MIN_PYTHON:
        raise BuildError(
            f"LibreOffice's Python is {version}; the kanbanmesh SDK needs "
            f"{'.'.join(map(str, MIN_PYTHON))} or newer"
        )
    native = platform_tag is None
    platform_tag = platform_tag or f"manylinux2014_{platform.machine()}"
    with tempfile.TemporaryDirectory(prefix="kanbanmesh-oxt-") as work:
        staging = Path(work) / "oxt"
        stage(staging, version, platform_tag)
        if native and python is not None and python_version(python) == version:
            check_imports(python, staging)
        pack(staging, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the kanbanmesh LibreOffice extension (.oxt).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the .oxt to write ({DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--office-python", help="LibreOffice's Python (default: found by itself)")
    parser.add_argument("--python-version", help="build for this Python version (default: LibreOffice's)")
    parser.add_argument("--platform", help="wheel platform tag (default: manylinux2014_<machine>)")
    args = parser.parse_args(argv)
    try:
        out = build(args.out, office=args.office_python, version=args.python_version, platform_tag=args.platform)
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    print(f"built {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
