#!/usr/bin/env bash
# Wait up to N seconds for a background recipe (or until it is done), then collect into $OUT.
#   bash .ci/gpu/poll.sh [seconds] [scene]
N=${1:-500}; SCENE=${2:-maze}; export PYTHONPATH=/tmp/site:$PWD
for _ in $(seq 1 "$N"); do [ -f "runs/$SCENE/logs/DONE" ] && break; sleep 1; done
for f in runs/"$SCENE"/logs/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -4; done
bash .ci/gpu/collect.sh "$SCENE" 1
