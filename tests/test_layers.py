"""The stack: imports run one way, down the layers of pyproject.toml's import-linter contracts.

A new upward import (a role importing the server or the settings, the core importing a role)
fails `test_imports_run_down_the_stack`; a new module that no layer names fails
`test_every_module_is_in_a_layer`, so nothing escapes the contract by being left out of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONFIG = PYPROJECT["tool"]["importlinter"]


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on this tree (not on whatever copy of the packages is installed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = Path(sys.executable).with_name("lint-imports")  # installed beside this Python
    return subprocess.run(
        [str(command), "--config", str(config), "--no-cache"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def layer_modules() -> set[str]:
    """Every module or package a layer of the stack contract names."""
    (stack,) = [contract for contract in CONFIG["contracts"] if contract["id"] == "stack"]
    names: set[str] = set()
    for layer in stack["layers"]:
        names.update(name.strip() for name in layer.replace("|", ":").split(":"))
    return names


def test_imports_run_down_the_stack() -> None:
    result = lint_imports(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_upward_import_is_reported(tmp_path: Path) -> None:
    # The same check with two layers swapped: the server imports the core, which is now above.
    config = tmp_path / "upside_down.toml"
    config.write_text(
        f"[tool.importlinter]\nroot_packages = {CONFIG['root_packages']!r}\n\n"
        "[[tool.importlinter.contracts]]\nname = 'upside down'\ntype = 'layers'\n"
        "layers = ['kanbanmesh.board', 'kanbanmesh.server']\n",
        encoding="utf-8",
    )
    result = lint_imports(config)
    assert result.returncode != 0
    assert "kanbanmesh.server" in result.stdout and "BROKEN" in result.stdout, result.stdout


def test_every_module_is_in_a_layer() -> None:
    shipped = {name.rstrip("*") for name in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert set(CONFIG["root_packages"]) == shipped, "every package the wheel ships is checked"
    named = layer_modules()
    packages = {name for name in CONFIG["root_packages"] if name != "kanbanmesh"}
    assert packages <= named, f"root packages in no layer: {sorted(packages - named)}"
    # kanbanmesh holds the top and the core: each of its modules and subpackages is named alone.
    # Its __init__.py is in no layer; it holds only the version, and an upward import there
    # would still be reported, as a chain through it.
    children = {
        f"kanbanmesh.{path.stem}" for path in (ROOT / "kanbanmesh").iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py")
        or (path.is_dir() and (path / "__init__.py").is_file())
    }
    assert children <= named, f"modules of kanbanmesh in no layer: {sorted(children - named)}"
