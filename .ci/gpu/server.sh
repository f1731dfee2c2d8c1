#!/usr/bin/env bash
# The ZeroMQ server on one GPU (issue 7): one command, under 2 minutes with 15 s phases.
#   bash .ci/gpu/server.sh [checkpoint] [seconds_per_phase]
# A distilled student (default runs/maze/distill/checkpoint, the `small` model) served by
# `python -m controls.server` on 127.0.0.1, measured by `python -m controls.bench_server`:
#   1 session stepping back to back: round-trip latency per frame p50/p99 (and its frames/s);
#   64 sessions stepping as fast as they can: aggregate env frames/s (target >= 5,000), mean
#   batch, mean steps per frame, round trip under load, and the server's own overhead
#   (socket + msgpack + batching, outside the engine) as a share of engine time (target <= 10%).
# Steps are adaptive (DSA: the confidence head ends each frame, 1 to k_max steps) at
# confidence >= TAU (default 0.8); STEPS=N fixes them instead (a teacher has fixed steps only).
# Each client is its own process (16 cores): 64 client threads would share one interpreter lock
# and could cap frames/s themselves; CLIENTS=threads measures that way instead; VECTOR=K runs
# SESSIONS/K client processes of K sessions each, stepping them by step_many (as SimVectorEnv does), the
# frames as a message part of their own (obs_part, protocol 3) and the infos as columns (info_columns, protocol 4);
# INLINE_FRAMES=1 puts the frames in the msgpack reply, INFO_ROWS=1 the infos one map per session.
# MODES (default "inline"): how the server runs its engine, one run each (controls.bench_server
# --modes): inline (on the loop's thread), overlap (its own thread), split (its own thread, half the
# sessions per batch); two or more modes run in-process on one engine (captured once), side by side.
# Other knobs: GC_FREEZE=0 (the server without gc.freeze), SESSIONS (64), WARMUP (8 s before each phase: CUDA graph captures land there),
# DEVICE (cuda), BATCH_WAIT_MS (2), DSA_KERNELS (auto|torch|triton, read by kernels.ops; default auto: Triton on CUDA).
# BASELINE: an earlier tree's code (made as for engine.sh, carried with the command): the same bench
# runs there first, then here, on the same machine minutes apart ($OUT/server_bench_baseline.json).
# Results: $OUT/server_bench.json (all of it) and $OUT/server_bench.log (ends in the table); NAME=X
# names them server_bench-X.* instead, so several runs in one command keep their results apart.
source .ci/gpu/setup.sh
CKPT=${1:-runs/maze/distill/checkpoint}; PHASE_S=${2:-15}
TAU=${TAU:-0.8}; STEPS=${STEPS:-adaptive}; SESSIONS=${SESSIONS:-64}; WARMUP=${WARMUP:-8}
DEVICE=${DEVICE:-cuda}; BATCH_WAIT_MS=${BATCH_WAIT_MS:-2}; CLIENTS=${CLIENTS:-processes}
if [ ! -f "$CKPT/manifest.json" ]; then
  echo "server.sh: no checkpoint at $CKPT: pass a distilled student's folder (carry it with the command)" >&2
  exit 2
fi
CKPT=$(realpath "$CKPT"); SITE=/tmp/site
FLAGS=(--checkpoint "$CKPT" --device "$DEVICE" --sessions "$SESSIONS" --seconds "$PHASE_S" --warmup "$WARMUP"
       --steps "$STEPS" --batch-wait-ms "$BATCH_WAIT_MS" --start-timeout 120)
HOW="$STEPS steps"
[ "${GC_FREEZE:-1}" = 0 ] && FLAGS+=(--no-gc-freeze)  # the server's start-up objects left to full collections
if [ "$STEPS" = adaptive ]; then FLAGS+=(--tau "$TAU"); HOW="adaptive steps, tau $TAU"; fi
if [ -n "${VECTOR:-}" ]; then FLAGS+=(--vector "$VECTOR"); CLIENTS="vector of $VECTOR"  # step_many clients
  if [ -n "${INLINE_FRAMES:-}" ]; then FLAGS+=(--inline-frames); CLIENTS="$CLIENTS, frames inline"; fi
  if [ -n "${INFO_ROWS:-}" ]; then FLAGS+=(--info-rows); CLIENTS="$CLIENTS, infos one map per session"; fi
elif [ "$CLIENTS" = processes ]; then FLAGS+=(--processes); fi
MODES=${MODES:-inline}
# shellcheck disable=SC2206 (the modes are words)
FLAGS+=(--modes $MODES)
if [ "$(echo "$MODES" | wc -w)" -gt 1 ]; then FLAGS+=(--in-process); fi
TAG=${NAME:+-$NAME}
LOG=$OUT/server_bench$TAG.log
{ echo "server.sh: $CKPT, $HOW, $SESSIONS sessions, client $CLIENTS, $PHASE_S s per phase," \
       "modes $MODES, $(nproc) cores, DSA_KERNELS=${DSA_KERNELS:-auto}"
  command -v nvidia-smi >/dev/null && nvidia-smi -L || true; } | tee "$LOG"
bench() {  # bench TREE JSON: a hard stop inside one device call; SIGINT lets the bench stop its server
  (cd "$1" && PYTHONPATH=$SITE:$PWD timeout -k 15 -s INT $(( $(echo "$MODES" | wc -w) * 2 * (PHASE_S + WARMUP) + 150)) \
     python3 -m controls.bench_server "${FLAGS[@]}" --json "$2" 2>&1 | tee -a "$LOG")
}
if [ -n "${BASELINE:-}" ]; then
  echo "server.sh: the baseline tree $BASELINE first" | tee -a "$LOG"
  bench "$(realpath "$BASELINE")" "$(realpath -m "$OUT/server_bench${TAG}_baseline.json")" || echo "server.sh: the baseline run failed" | tee -a "$LOG"
  echo "server.sh: this tree" | tee -a "$LOG"
fi
bench "$PWD" "$(realpath -m "$OUT/server_bench$TAG.json")"
