#!/usr/bin/env bash
# The engine alone on one GPU, this tree against a baseline tree, side by side in one call:
#   BASELINE=runs/baseline bash .ci/gpu/engine.sh CHECKPOINT [rounds]
# `sim.bench.engine_latency`: WorldSim.step end to end as play.py and the server drive it, one
# player (300 frames) and SESSIONS (64) players (200 frames), adaptive steps at TAU (0.8), after
# 20 frames of warm-up. Each tree runs in its own process, alternating (baseline, this, baseline,
# this, ... `rounds` times, default 2), so both see the same card in the same minutes; the last
# run of this tree also profiles both sizes (device busy time against wall time, host operators).
# DEVICE (cuda) and FRAMES ("300 200": one player's, the sessions') change the run (a CPU dry run:
# DEVICE=cpu FRAMES="20 10" SESSIONS=4).
# BASELINE: an earlier tree's code, made here and carried with the command, e.g.
#   mkdir -p runs/baseline && git archive 9fb9b47 sim kernels scenes controls | tar -x -C runs/baseline
# (without it, this tree alone). Results: $OUT/engine.log, ending in the table; $OUT/engine.jsonl.
source .ci/gpu/setup.sh
set +e
CKPT=$(realpath "${1:?usage: engine.sh CHECKPOINT [rounds]}"); ROUNDS=${2:-2}
TAU=${TAU:-0.8}; SESSIONS=${SESSIONS:-64}; DEVICE=${DEVICE:-cuda}; FRAMES=${FRAMES:-300 200}; SITE=/tmp/site
LOG=$OUT/engine.log; JSONL=$(realpath -m "$OUT/engine.jsonl"); : > "$JSONL"
run() {  # run TREE LABEL PROFILE
  (cd "$1" && PYTHONPATH=$SITE:$PWD timeout 170 python3 - "$CKPT" "$2" "$3" "$TAU" "$SESSIONS" "$DEVICE" $FRAMES >> "$JSONL" <<'PY'
import json, sys, torch
from sim.bench import engine_latency
ckpt, label, profile, tau, sessions, device = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
for n, frames in ((1, int(sys.argv[7])), (sessions, int(sys.argv[8]))):
    r = engine_latency(ckpt, torch.device(device), frames, tau, sessions=n, profile=profile)
    r["tree"] = label
    print(json.dumps(r), flush=True)
PY
  ) || echo "engine.sh: the $2 run failed (exit $?)" | tee -a "$LOG"
}
echo "engine.sh: $CKPT, tau $TAU, 1 and $SESSIONS sessions, baseline ${BASELINE:-none}, $ROUNDS rounds" | tee "$LOG"
for r in $(seq 1 "$ROUNDS"); do
  [ -n "${BASELINE:-}" ] && run "$(realpath "$BASELINE")" baseline 0
  run "$PWD" this "$([ "$r" = "$ROUNDS" ] && echo 1 || echo 0)"
done
python3 - "$JSONL" <<'PY' | tee -a "$LOG"
import json, sys
from sim.bench import format_engine
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
for r in rows:
    if "profile" in r:
        print("\n".join(format_engine(r)))
print(f"{'tree':>9} {'sessions':>8} {'p50 ms':>7} {'p99 ms':>7} {'frames/s':>9} {'mean steps':>10}")
for r in rows:
    print(f"{r['tree']:>9} {r['sessions']:>8} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['frames_per_s']:>9.1f} {r['mean_steps']:>10.2f}")
PY
