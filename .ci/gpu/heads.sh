#!/usr/bin/env bash
# One student generator, two confidence heads (issue 4), in calls that each fit the 10-minute limit:
#   bash .ci/gpu/heads.sh train [minutes] [head_minutes]   # student K (k_max target), then head R alone
#                                                            (head_minutes 0: student K only)
#   bash .ci/gpu/heads.sh eval DIR_K DIR_R                   # both students' DSA eval, the teacher beside K
# train: a student distilled from the shipped teacher with the k_max confidence target (DISTILL_FLAGS,
# default "--regress-weight 2 --regress-frames 4"), then its confidence head alone retrained toward
# each frame's closeness to the real frame (--head-only --conf-target real, HEAD_FLAGS), so the two
# differ only in their heads: at fixed k their frames are the same, and the eval compares the
# allocators. Both come back as bf16 checkpoints in 15 MB parts ($OUT/ckpt-K.tar.*, ckpt-R.tar.*;
# `cat ckpt-K.tar.* | tar -x` gives student-K/), with the training logs in $OUT/train.tar.
# eval: `sim.eval --dsa` on 16 held-out seeds x 64 frames for each (TAUS, TEACHER_STEPS), results
# in $OUT/eval-K.tar and eval-R.tar.
source .ci/gpu/setup.sh
TEACHER=sim/weights/maze
RECIPE=(--scene maze --preset small --teacher "$TEACHER" --batch-size 64 --clip-frames 14 --prompt-frames 4
        --k-max 4 --workers 6 --log-every 10)
export_bf16() {  # export_bf16 CHECKPOINT NAME: a bf16 copy, sent back in parts
  bash .ci/gpu/bf16_copy.sh "$1" "runs/heads/student-$2" &&
    tar -C runs/heads -cf - "student-$2" | split -b 15M - "$OUT/ckpt-$2.tar."
}
case "${1:-train}" in
train)
  MIN=${2:-4}; HEAD_MIN=${3:-1}
  mkdir -p runs/heads
  # shellcheck disable=SC2086 (flags are words)
  python3 -m sim.train --stage distill "${RECIPE[@]}" --minutes "$MIN" --lr 3e-5 --warmup-steps 200 \
    ${DISTILL_FLAGS:---regress-weight 2 --regress-frames 4} --out runs/heads/k 2>&1 |
    tr '\r' '\n' | grep -v -E '^\s*$|it/s\]$' | tail -3
  export_bf16 runs/heads/k/distill/checkpoint K
  runs=(k)
  if [ "$HEAD_MIN" != 0 ]; then  # head_minutes 0: student K alone
    # shellcheck disable=SC2086
    python3 -m sim.train --stage distill "${RECIPE[@]}" --minutes "$HEAD_MIN" --head-only --conf-target real \
      --init runs/heads/k/distill/checkpoint --lr 1e-3 --warmup-steps 20 ${HEAD_FLAGS:---conf-frames 2} \
      --out runs/heads/r 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$|it/s\]$' | tail -3
    export_bf16 runs/heads/r/distill/checkpoint R
    runs+=(r)
  fi
  tar -C runs/heads -cf "$OUT/train.tar" "${runs[@]/%//distill/metrics.jsonl}"
  for r in "${runs[@]}"; do tail -2 "runs/heads/$r/distill/metrics.jsonl" | cut -c1-300; done
  ;;
eval)
  TAUS=${TAUS:-0.5 0.7 0.8 0.9 0.95}
  for pair in "K:${2:?usage: heads.sh eval DIR_K DIR_R}" "R:${3:?usage: heads.sh eval DIR_K DIR_R}"; do
    name=${pair%%:*}; ck=${pair#*:}
    teacher=(); [ "$name" = K ] && teacher=(--teacher "$TEACHER" --teacher-steps ${TEACHER_STEPS:-32})
    # shellcheck disable=SC2086
    python3 -m sim.eval --checkpoint "$ck" --dsa "${teacher[@]}" --taus $TAUS --seeds 16 --horizon 64 \
      --out "runs/heads/eval-$name" 2>&1 | tee "runs/heads/eval-$name.log" | tr '\r' '\n' |
      grep -v -E '^\s*$|it/s\]$' | tail -30
    (cd runs/heads && tar -cf "$OUT/eval-$name.tar" --exclude='*.npz' --exclude='strip_*' "eval-$name" "eval-$name.log")
  done
  ;;
esac
