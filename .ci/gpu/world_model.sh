#!/usr/bin/env bash
# The world-model recipe on one GPU: autoencoder, then teacher, then the quality eval.
#   bash .ci/gpu/world_model.sh [scene] [ae_minutes] [teacher_minutes] [init_checkpoint]
# Logs go to runs/<scene>/logs/ so a background run (setsid) survives between device calls;
# `bash .ci/gpu/collect.sh` copies logs, metrics and a bf16 checkpoint into $OUT.
# With an init checkpoint (a world checkpoint from an earlier run) both stages warm-start; with
# ae_minutes 0 the init checkpoint's autoencoder is kept as it is and only the teacher trains on:
#   bash .ci/gpu/world_model.sh maze 0 20 sim/weights/maze   # 20 more minutes for the shipped teacher
# TEACHER_FLAGS adds sim.train flags to the teacher stage (e.g. "--seed 1 --lr-final 0.05": fresh
# worlds and a cosine anneal over the time box); EVAL=0 skips the GPU eval at the end.
source .ci/gpu/setup.sh
SCENE=${1:-maze}; AE_MIN=${2:-4}; TEACHER_MIN=${3:-18}; INIT=${4:-}
RUN=runs/$SCENE; LOGS=$RUN/logs; mkdir -p "$LOGS"
if [ "$AE_MIN" != 0 ]; then
python3 -m sim.train --stage ae --scene "$SCENE" --preset small --minutes "$AE_MIN" ${INIT:+--init "$INIT"} \
  --batch-size 32 --lr 1e-3 --warmup-steps 100 --workers 12 --out "$RUN" > "$LOGS/ae.log" 2>&1
fi
AE=$RUN/ae/checkpoint
if [ "$AE_MIN" = 0 ]; then
  [ -n "$INIT" ] && AE=$INIT  # the init checkpoint's own autoencoder
  [ -f "$AE/manifest.json" ] || { echo "world_model.sh: ae_minutes 0 needs an init checkpoint or $RUN/ae/checkpoint" >&2; exit 2; }
fi
python3 -m sim.train --stage teacher --scene "$SCENE" --preset small --minutes "$TEACHER_MIN" \
  ${INIT:+--init "$INIT"} --ae "$AE" --save-every-minutes 3 \
  --batch-size 64 --workers 14 --compile ${TEACHER_FLAGS:-} --out "$RUN" > "$LOGS/teacher.log" 2>&1
[ "${EVAL:-1}" = 0 ] || python3 -m sim.eval --checkpoint "$RUN/teacher/checkpoint" --steps 8 16 32 --out "$RUN/eval" > "$LOGS/eval.log" 2>&1
echo done > "$LOGS/DONE"
