#!/usr/bin/env bash
# Run the whole test suite (slow, real-model tests included) with the project's venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec .venv/bin/python -m pytest "$@"
