#!/usr/bin/env bash
# The README's second command (and what .ci/run runs): install test needs, run the quality gates and the whole
# suite (unit, integration with the real model, SQLite and PostgreSQL, end-to-end against real processes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
scripts/services.sh
if [ ! -x /usr/bin/chromium ]; then
    # The browser tests drive Debian's Chromium through Playwright (`playwright install` cannot download here).
    echo "==> installing chromium for the browser tests"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi
echo "==> preparing the model and the training base (cached after the first run)"
.venv/bin/agentloop prepare

MARKERS=()
if [ "${1:-}" = "--all" ]; then shift; MARKERS=(-m "slow or not slow"); fi

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
# Two workers or more (pytest-xdist, one per core up to 4): the tests run llama.cpp and torch on one thread
# each, so a second worker fills the other core. --dist loadfile keeps each file on one worker, so a module's
# server, browser or trained adapter is set up once. `scripts/test.sh -n 0` runs everything in this process.
.venv/bin/pytest -p no:cacheprovider -n auto --maxprocesses 4 --dist loadfile \
    --cov=agentloop --cov-report=term --cov-report=xml:coverage.xml "${MARKERS[@]}" "$@"
echo "==> coverage of domain/ and application/ (gate: 90%)"
.venv/bin/coverage report --include='*/agentloop/domain/*,*/agentloop/application/*' --fail-under=90
