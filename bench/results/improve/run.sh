#!/bin/bash
# The measured run in improve.md: `agentloop improve --cycles 2 --json` on a fresh data directory with every
# setting at its default (2 llama.cpp threads on a 2-core Intel Xeon, nothing else running), then the base
# and the promoted version scored on every held-out item (eval-*.json; one thread each, side by side).
set -u
DATA=${DATA:-/tmp/imp2/data}
date -u
/usr/bin/time -v agentloop --data-dir "$DATA" improve --cycles 2 --json > improve-stdout.json 2> improve-stderr.log
echo "rc=$?"
date -u
for version in base v1; do
    AGENTLOOP_N_THREADS=1 agentloop --data-dir "$DATA" eval --version "$version" --json > "eval-$version.json" &
done
wait
