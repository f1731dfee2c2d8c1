#!/usr/bin/env bash
# DSA distillation from a teacher checkpoint, then the DSA eval, on one GPU.
#   bash .ci/gpu/distill.sh [teacher_checkpoint] [minutes] [eval_horizon]
# Figures and a bf16 copy of the student land in $OUT.
source .ci/gpu/setup.sh
TEACHER=${1:-runs/maze-teacher}; MIN=${2:-4}; HORIZON=${3:-16}
python3 -m sim.train --stage distill --scene maze --preset small --teacher "$TEACHER" --minutes "$MIN" \
  --batch-size 16 --clip-frames 10 --prompt-frames 4 --k-max 4 --workers 14 --log-every 10 \
  --out runs/maze 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' | grep -v '%|' | tee "$OUT/distill.log"
cp runs/maze/distill/metrics.jsonl "$OUT/distill_metrics.jsonl"
python3 -m sim.eval --checkpoint runs/maze/distill/checkpoint --dsa --taus 0.5 0.8 0.9 --seeds 8 \
  --horizon "$HORIZON" --policies explore --out "$OUT/dsa" 2>&1 | tr '\r' '\n' | grep -v -E 'it/s\]|^\s*$' | tail -20
rm -f "$OUT"/dsa/strip_*tau0.5* "$OUT"/dsa/strip_*fixed1* "$OUT"/dsa/strip_*fixed2* "$OUT"/dsa/strip_*fixed3* "$OUT/dsa/eval_values.npz"
