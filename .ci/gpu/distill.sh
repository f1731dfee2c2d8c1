#!/usr/bin/env bash
# DSA on one GPU: two students distilled side by side in the background, then the DSA eval.
#   bash .ci/gpu/distill.sh start [minutes] [teacher]   # returns at once; runs under setsid
#   bash .ci/gpu/distill.sh poll [seconds]              # waits up to N s, prints progress, collects
#   bash .ci/gpu/distill.sh eval DIR [NAME] [teacher]   # the eval alone, on a carried student
# By default student A commits each frame with the separate t = 0 cache pass and student B caches
# its exit step's K/V instead (--cache-last-step, one pass fewer per frame); FLAGS_A and FLAGS_B
# (defaults "" and "--cache-last-step") set what tells them apart, e.g. FLAGS_A="--regress-weight 1".
# Both start from the teacher (default: the shipped maze teacher) and train for the same minutes on
# the same recipe:
python_train() {
  python3 -m sim.train --stage distill --scene maze --preset small --teacher "$TEACHER" --minutes "$MIN" \
    --batch-size 64 --clip-frames 14 --prompt-frames 4 --k-max 4 --lr 3e-5 --warmup-steps 200 \
    --workers 6 --log-every 10 --save-every-minutes 4 $TRAIN_FLAGS "$@"
}
# Then, for each student in turn (EVAL_PARALLEL=1: both at once; concurrent GPU processes made
# Triton's autotuner store K/V at unwritten slots, a CUDA illegal memory access, until
# kernels/autotune.py, BENCHMARKS.md, tenth and eleventh sessions):
# python -m sim.eval --dsa on 16 held-out seeds, horizon 64, both
# policies, fixed k = 1..4 and adaptive taus (A also with the teacher on the same clips, at
# TEACHER_STEPS, default "32"; e.g. "4 32").
# STUDENTS ("A B" by default; "A" trains A alone, with the whole GPU) picks which to train.
# TRAIN_FLAGS and EVAL_FLAGS (default "--seeds 16 --horizon 64") override either (a CPU dry run);
# EVAL=0 skips the eval (a student for the engine and server benches only).
# Everything lands in runs/dsa/; poll copies into $OUT: results.tar (eval.json, dsa.png,
# rollout.png, metrics, logs of both) and each student as bf16 in 15 MB parts (ckpt-A.tar.*, ckpt-B.tar.*).
source .ci/gpu/setup.sh
set +e
DSA=runs/dsa
TAUS=${TAUS:-0.5 0.6 0.7 0.8 0.85 0.9 0.95}  # adaptive thresholds the eval sweeps (override: TAUS="0.5 0.8")
case "${1:-start}" in
start)
  MIN=${2:-11}; TEACHER=${3:-sim/weights/maze}; EVAL_FLAGS=${EVAL_FLAGS:---seeds 16 --horizon 64}
  STUDENTS=${STUDENTS:-A B}
  mkdir -p "$DSA"
  rm -f "$DSA/DONE" "$DSA/TRAINED"
  setsid bash -c "
    source .ci/gpu/setup.sh; set +e
    $(declare -f python_train); MIN=$MIN; TEACHER=$TEACHER; TRAIN_FLAGS='${TRAIN_FLAGS:-}'
    case '$STUDENTS' in *A*) python_train --out runs/maze-a ${FLAGS_A:-} > $DSA/train-A.log 2>&1 & ;; esac
    case '$STUDENTS' in *B*) python_train --out runs/maze-b ${FLAGS_B---cache-last-step} > $DSA/train-B.log 2>&1 & ;; esac
    wait; touch $DSA/TRAINED
    [ '${EVAL:-1}' = 0 ] && { touch $DSA/DONE; exit 0; }
    case '$STUDENTS' in *A*) python3 -m sim.eval --checkpoint runs/maze-a/distill/checkpoint --dsa --teacher $TEACHER \
      --teacher-steps ${TEACHER_STEPS:-32} --taus $TAUS $EVAL_FLAGS --out $DSA/eval-A > $DSA/eval-A.log 2>&1 \
      $([ "${EVAL_PARALLEL:-0}" = 1 ] && echo '&') ;; esac
    case '$STUDENTS' in *B*) python3 -m sim.eval --checkpoint runs/maze-b/distill/checkpoint --dsa --taus $TAUS \
      $EVAL_FLAGS --out $DSA/eval-B > $DSA/eval-B.log 2>&1 ;; esac
    wait; touch $DSA/DONE" > "$DSA/driver.log" 2>&1 < /dev/null &
  echo "distill.sh: started student(s) $STUDENTS for $MIN minutes from $TEACHER (logs in $DSA)"
  ;;
poll)
  N=${2:-500}
  for _ in $(seq 1 "$N"); do [ -f "$DSA/DONE" ] && break; sleep 1; done
  for f in "$DSA"/*.log; do [ -f "$f" ] || continue; echo "== $f"; tr '\r' '\n' < "$f" | grep -v -E '^\s*$|it/s\]$' | tail -4; done
  for r in a b; do tail -1 runs/maze-$r/distill/metrics.jsonl 2>/dev/null | cut -c1-400; done
  # Each student comes back on every poll from its first save on (--save-every-minutes 4; the EMA
  # weights as bf16), not only with the eval: a machine lost later (the eleventh and twelfth
  # sessions lost theirs) then costs the minutes since that save and the eval, which `eval`
  # below reruns on a carried student.
  for r in A B; do
    low=$(echo $r | tr AB ab)
    [ -d runs/maze-$low/distill/checkpoint ] || continue
    cp runs/maze-$low/distill/metrics.jsonl "$DSA/metrics-$r.jsonl" 2>/dev/null
    rm -rf "$DSA/student-$r"
    bash .ci/gpu/bf16_copy.sh runs/maze-$low/distill/checkpoint "$DSA/student-$r" \
      && tar -C "$DSA" -cf - "student-$r" | split -b 15M - "$OUT/ckpt-$r.tar."
  done
  (cd "$DSA" && tar -cf "$OUT/results.tar" --exclude='student-*' --exclude='*.npz' --exclude='strip_*' .)
  ls -la "$OUT"
  ;;
eval)
  # bash .ci/gpu/distill.sh eval DIR [NAME] [teacher]: the DSA eval alone, in the foreground, on a
  # student carried to the machine (carry DIR; the tree and one bf16 student fit the 64 MiB), with
  # the teacher beside it at TEACHER_STEPS; results in $OUT/eval-NAME.tar.
  CK=${2:?usage: distill.sh eval DIR [NAME] [teacher]}; NAME=${3:-A}; TEACHER=${4:-sim/weights/maze}
  EVAL_FLAGS=${EVAL_FLAGS:---seeds 16 --horizon 64}
  mkdir -p "$DSA"
  python3 -m sim.eval --checkpoint "$CK" --dsa --teacher "$TEACHER" --teacher-steps ${TEACHER_STEPS:-32} \
    --taus $TAUS $EVAL_FLAGS --out "$DSA/eval-$NAME" 2>&1 | tee "$DSA/eval-$NAME.log" | tr '\r' '\n' | grep -v -E '^\s*$|it/s\]$' | tail -40
  (cd "$DSA" && tar -cf "$OUT/eval-$NAME.tar" --exclude='*.npz' --exclude='strip_*' "eval-$NAME" "eval-$NAME.log")
  ls -la "$OUT"
  ;;
esac
