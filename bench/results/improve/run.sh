#!/bin/bash
# The measured run in improve.md: `agentloop improve --cycles 2 --json` on a fresh data directory with every
# setting at its default (2 llama.cpp threads on a 2-core Intel Xeon, nothing else running), then the base
# and every candidate scored on all 68 held-out items (eval-*.json; one thread each, two side by side).
set -u
DATA=${DATA:-/tmp/improve/data}
date -u
/usr/bin/time -v agentloop --data-dir "$DATA" improve --cycles 2 --json > improve-stdout.json 2> improve-stderr.log
echo "rc=$?"
date -u
cp "$DATA"/reports/improve.{md,json,png} .
for version in base v1 v2; do
    AGENTLOOP_N_THREADS=1 agentloop --data-dir "$DATA" eval --version "$version" --json > "eval-$version.json" &
    [ "$version" = v1 ] && wait
done
wait
