#!/usr/bin/env bash
# Create .venv and install agentloop into it. llama-cpp-python is compiled here (once; pip caches the wheel)
# with CPU flags probed from /proc/cpuinfo: the default GGML_NATIVE build crashes on some hosts (TECH_NOTES).
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
# The python tool's sandbox (bubblewrap) confines code to its workspace; best effort, as without it the tool
# falls back to rlimits and `unshare --net` (`agentloop doctor` says which one is in force).
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing bubblewrap (the python tool's sandbox)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q bubblewrap >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; } \
        || echo "    could not install bubblewrap; the python tool falls back to rlimits"
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel setuptools

LLAMA_VERSION="$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)"
if ! .venv/bin/python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_VERSION')" 2>/dev/null; then
    CMAKE_ARGS="$(.venv/bin/python scripts/llama_cmake_args.py)"
    export CMAKE_ARGS
    echo "==> installing llama-cpp-python $LLAMA_VERSION (a source build takes ~6-10 min on 2 cores the first time)"
    echo "    CMAKE_ARGS=$CMAKE_ARGS"
    "${PIP[@]}" install -q "llama-cpp-python==$LLAMA_VERSION"
fi

TARGET="."
if [ -n "${1:-}" ]; then TARGET=".[$1]"; fi
echo "==> installing agentloop ($TARGET)"
"${PIP[@]}" install -q -e "$TARGET"
