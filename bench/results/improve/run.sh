#!/bin/bash
cd /work/wt-gt
export PYTHONPATH=/work/wt-gt/src
export AGENTLOOP_N_THREADS=1
export AGENTLOOP_GROUPTHINK_SAMPLES=3
export AGENTLOOP_GROUPTHINK_MAX_TOKENS=64
export AGENTLOOP_EVAL_MAX_ITEMS_PER_SUITE=2
export AGENTLOOP_TRAIN_BATCH_SIZE=2
export AGENTLOOP_TRAIN_LEARNING_RATE=0.0005
date -u
/usr/bin/time -v /work/main/.venv/bin/agentloop --data-dir /tmp/gt-run improve --cycles 2 --label 10 --max-steps 12 --json > /tmp/gt-run/improve-stdout.json 2> /tmp/gt-run/improve-stderr.log
echo "rc=$?"
date -u
