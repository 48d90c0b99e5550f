"""Everything the packages import at run time is declared in pyproject.toml (checked by deptry).

An import of a distribution that is not declared (missing, or installed only as another's
dependency) fails `test_imports_are_declared`; tests, benchmarks and examples are left out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def deptry(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # "." from the root: the excluded folders are matched relative to the path scanned.
        [sys.executable, "-m", "deptry", ".", "--config", str(config), "--no-ansi"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )


def test_imports_are_declared() -> None:
    result = deptry(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_undeclared_import_is_reported(tmp_path: Path) -> None:
    # pyproject.toml without numpy, which rag/ imports (and which is installed, as a dependency
    # of faiss-cpu and others: deptry tells the two apart).
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"numpy>=1.26",\n' in text
    config = tmp_path / "pyproject.toml"
    config.write_text(text.replace('"numpy>=1.26",\n', ""), encoding="utf-8")
    result = deptry(config)
    assert result.returncode != 0
    assert "'numpy' imported but" in result.stderr, result.stdout + result.stderr
