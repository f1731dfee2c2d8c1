#!/usr/bin/env bash
# Copy a run's logs, metrics, eval figures and (bf16, split) checkpoint into $OUT.
#   bash .ci/gpu/collect.sh [scene] [with_checkpoint]
SCENE=${1:-maze}; RUN=runs/$SCENE; OUT=${OUT:-runs/gpu-out}; mkdir -p "$OUT"
{ for f in "$RUN"/logs/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v -E '^\s*$|it/s\]$|[0-9]+/[0-9]+s ' | tail -60; done; } > "$OUT/logs.txt" 2>/dev/null
cat "$RUN"/ae/metrics.jsonl "$RUN"/teacher/metrics.jsonl > "$OUT/metrics.jsonl" 2>/dev/null
[ -f "$RUN/eval/eval.json" ] && cp "$RUN/eval/eval.json" "$RUN/eval/rollout.png" "$OUT/" 2>/dev/null
if [ "${2:-0}" = 1 ] && [ -d "$RUN/teacher/checkpoint" ]; then
  bash .ci/gpu/bf16_copy.sh "$RUN/teacher/checkpoint" "$RUN/ckpt-bf16"
  tar -C "$RUN" -cf - ckpt-bf16 | split -b 15M - "$OUT/ckpt.tar."
fi
ls -la "$OUT"
