#!/usr/bin/env bash
# Install what the benchmark baselines (bench/baselines.py) need.
# Idempotent; does NOT touch the project's dependencies (pyproject.toml).
#
#   PYTHON=/work/main/.venv/bin/python bash bench/setup.sh
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
status=0

# 1. redis-server binary (system package).
if command -v redis-server >/dev/null 2>&1; then
    echo "[bench/setup] redis-server already on PATH: $(command -v redis-server)"
else
    echo "[bench/setup] redis-server not found; installing via apt-get"
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
    if command -v apt-get >/dev/null 2>&1 \
        && $SUDO apt-get update \
        && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y redis-server; then
        echo "[bench/setup] installed redis-server: $(command -v redis-server || echo '?')"
    else
        echo "[bench/setup] WARNING: could not install redis-server with apt-get." >&2
        echo "[bench/setup]          Install Redis manually (redis-server must be on PATH);" >&2
        echo "[bench/setup]          the Redis/Celery baselines will be skipped until then." >&2
        status=1
    fi
fi

# 2. Python packages (celery[redis], redis client) into the active interpreter.
echo "[bench/setup] installing $HERE/requirements.txt with $PY"
if "$PY" -m pip install -r "$HERE/requirements.txt"; then
    "$PY" -c 'import celery, redis; print("[bench/setup] celery", celery.__version__, "| redis-py", redis.__version__)'
else
    echo "[bench/setup] WARNING: pip install -r $HERE/requirements.txt failed" >&2
    status=1
fi

exit "$status"
